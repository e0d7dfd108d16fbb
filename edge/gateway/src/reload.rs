//! TLS material from disk, and the watcher that reloads it without a restart.
//!
//! Every `reload_interval` the watcher compares the files' modification times and sizes;
//! on a change it rebuilds the certificate, trusted CAs and CRL for new handshakes, and
//! closes live connections whose certificate is now revoked or expired. Established
//! connections of everyone else are untouched (rotation without downtime).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use openshell_transport::server::ConnectionRegistry;
use openshell_transport::tls::{ServerMaterial, ServerTls};

use crate::GatewayError;
use crate::auth::Revocations;
use crate::config::TlsPaths;

/// Loads the server's TLS material and the revoked serials.
pub fn load(paths: &TlsPaths) -> Result<(ServerMaterial, HashSet<String>), GatewayError> {
    let missing = |what: &str, p: &Path| {
        GatewayError::Tls(format!(
            "{what} {} does not exist: create the PKI with `openshell pki init` (or point --pki-dir / OPENSHELL_TLS_* at your files, or run with --disable-tls on loopback)",
            p.display()
        ))
    };
    for (what, p) in [
        ("server certificate", &paths.cert),
        ("server key", &paths.key),
        ("client CA", &paths.client_ca),
    ] {
        if !p.exists() {
            return Err(missing(what, p));
        }
    }
    let cert = openshell_pki::fs::read_public(&paths.cert)?;
    let key = openshell_pki::fs::read_secret(&paths.key)?;
    let mut client_ca = openshell_pki::fs::read_public(&paths.client_ca)?;
    if let Some(bundle) = &paths.ca_bundle
        && bundle.exists()
    {
        client_ca.push(b'\n');
        client_ca.extend(openshell_pki::fs::read_public(bundle)?);
    }
    let crl = if paths.crl.exists() {
        openshell_pki::fs::read_public(&paths.crl)?
    } else {
        Vec::new()
    };
    let name = |p: &Path| p.display().to_string();
    let material = ServerMaterial::from_pem(&cert, &key, &client_ca, &crl).map_err(|e| {
        GatewayError::Tls(format!(
            "{e} (files: {}, {}, {}, {})",
            name(&paths.cert),
            name(&paths.key),
            name(&paths.client_ca),
            name(&paths.crl)
        ))
    })?;
    let revoked = openshell_transport::tls::revoked_serials(&material.crls)
        .map_err(|e| GatewayError::Tls(format!("{}: {e}", name(&paths.crl))))?;
    Ok((material, revoked))
}

fn fingerprint(paths: &TlsPaths) -> Vec<Option<(SystemTime, u64)>> {
    let mut files = vec![&paths.cert, &paths.key, &paths.client_ca, &paths.crl];
    if let Some(b) = &paths.ca_bundle {
        files.push(b);
    }
    files
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Closes connections whose certificate is revoked or expired; returns how many.
pub fn enforce(registry: &ConnectionRegistry, revocations: &Revocations) -> usize {
    let now = SystemTime::now();
    let revoked = registry.close_where(openshell_transport::close::CERTIFICATE_REVOKED, |m| {
        m.principal()
            .is_some_and(|p| revocations.is_revoked(&p.serial))
    });
    let expired = registry.close_where(openshell_transport::close::CERTIFICATE_EXPIRED, |m| {
        m.principal().is_some_and(|p| p.expired_at(now))
    });
    revoked + expired
}

/// Runs forever: reload on change, enforce revocation and expiry on live connections.
pub async fn watch(
    paths: TlsPaths,
    tls: Arc<ServerTls>,
    revocations: Arc<Revocations>,
    registry: Arc<ConnectionRegistry>,
    interval: Duration,
) {
    let mut last = fingerprint(&paths);
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let now = fingerprint(&paths);
        if now != last {
            // Files may be mid-rotation (several renames); a failed load is retried on the
            // next tick and the previous material stays in force meanwhile.
            match load(&paths) {
                Ok((material, revoked)) => match tls.reload(&material) {
                    Ok(()) => {
                        revocations.replace(revoked);
                        last = now;
                        tracing::info!("TLS material reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "new TLS material refused; keeping the old")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload TLS material yet; keeping the old")
                }
            }
        }
        let closed = enforce(&registry, &revocations);
        if closed > 0 {
            tracing::info!(
                closed,
                "closed connections with revoked or expired certificates"
            );
        }
    }
}
