//! TLS material from disk, and the watcher that reloads it without a restart.
//!
//! Every `reload_interval` the watcher compares the files' modification times and sizes;
//! on a change it rebuilds the certificate, trusted CAs and CRL for new handshakes, and
//! closes live connections whose certificate is now revoked, expired, or no longer chains to
//! a trusted CA (the CA was replaced, or a rotation's overlap ended). Established
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

/// What `load` produced: the material, revoked serials, and when the set of trusted CAs
/// next changes by itself (end of a CA rotation's overlap).
pub struct Loaded {
    pub material: ServerMaterial,
    pub revoked: HashSet<String>,
    pub next_trust_change: Option<SystemTime>,
}

/// Loads the server's TLS material and the revoked serials.
pub fn load(paths: &TlsPaths) -> Result<Loaded, GatewayError> {
    let missing = |what: &str, p: &Path| {
        GatewayError::Tls(format!(
            "{what} {} does not exist: create the PKI with `openshell pki init` (or point --pki-dir / OPENSHELL_TLS_* at your files, or run with --disable-tls on loopback)",
            p.display()
        ))
    };
    let pki = openshell_pki::PkiDir::new(&paths.pki_dir);
    let ca_file = paths
        .client_ca_override
        .clone()
        .unwrap_or_else(|| pki.ca_cert_path());
    for (what, p) in [
        ("server certificate", &paths.cert),
        ("server key", &paths.key),
        ("client CA", &ca_file),
    ] {
        if !p.exists() {
            return Err(missing(what, p));
        }
    }
    let cert = openshell_pki::fs::read_public(&paths.cert)?;
    let key = openshell_pki::fs::read_secret(&paths.key)?;
    // With a PKI index, trust exactly the CAs trusted now (both during a rotation's
    // overlap); without one (hand-made files), the CA file alone.
    let (client_ca, next_trust_change) =
        match (&paths.client_ca_override, pki.index_path().exists()) {
            (None, true) => {
                let bundle = pki
                    .client_ca_bundle()
                    .map_err(|e| GatewayError::Tls(e.to_string()))?;
                let next = pki
                    .next_trust_change()
                    .map_err(|e| GatewayError::Tls(e.to_string()))?
                    .map(SystemTime::from);
                (bundle, next)
            }
            _ => (openshell_pki::fs::read_public(&ca_file)?, None),
        };
    let crl_path = paths.crl();
    let crl = if crl_path.exists() {
        openshell_pki::fs::read_public(&crl_path)?
    } else {
        Vec::new()
    };
    let name = |p: &Path| p.display().to_string();
    let material = ServerMaterial::from_pem(&cert, &key, &client_ca, &crl).map_err(|e| {
        GatewayError::Tls(format!(
            "{e} (files: {}, {}, {}, {})",
            name(&paths.cert),
            name(&paths.key),
            name(&ca_file),
            name(&crl_path)
        ))
    })?;
    let revoked = openshell_transport::tls::revoked_serials(&material.crls)
        .map_err(|e| GatewayError::Tls(format!("{}: {e}", name(&crl_path))))?;
    Ok(Loaded {
        material,
        revoked,
        next_trust_change,
    })
}

fn fingerprint(paths: &TlsPaths) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .watched()
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Closes connections whose certificate is revoked, expired, or no longer chains to a CA
/// trusted now; returns how many. Each connection's chain is re-verified once per reload
/// (`ConnMeta::verify_trust` keeps the result per trust generation), so the ticks between
/// reloads cost a comparison per connection.
pub fn enforce(registry: &ConnectionRegistry, revocations: &Revocations) -> usize {
    use openshell_transport::close;
    let now = SystemTime::now();
    let revoked = |p: &openshell_transport::Principal| revocations.is_revoked(&p.serial);
    let expired = |p: &openshell_transport::Principal| p.expired_at(now);
    let n_revoked = registry.close_where(close::CERTIFICATE_REVOKED, |m| {
        m.principal().is_some_and(revoked)
    });
    let n_expired = registry.close_where(close::CERTIFICATE_EXPIRED, |m| {
        m.principal().is_some_and(|p| !revoked(p) && expired(p))
    });
    // Those closed above keep the reason they were given.
    let n_untrusted = registry.close_where(close::CERTIFICATE_UNTRUSTED, |m| {
        m.principal().is_some_and(|p| !revoked(p) && !expired(p)) && m.verify_trust().is_err()
    });
    n_revoked + n_expired + n_untrusted
}

/// Runs forever: reload on change, enforce revocation and expiry on live connections.
pub async fn watch(
    paths: TlsPaths,
    tls: Arc<ServerTls>,
    revocations: Arc<Revocations>,
    registry: Arc<ConnectionRegistry>,
    interval: Duration,
    next_trust_change: Option<SystemTime>,
) {
    let mut last = fingerprint(&paths);
    let mut trust_change = next_trust_change;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let now = fingerprint(&paths);
        let overlap_ended = trust_change.is_some_and(|t| SystemTime::now() >= t);
        if now != last || overlap_ended {
            // Files may be mid-rotation (several renames); a failed load is retried on the
            // next tick and the previous material stays in force meanwhile.
            match load(&paths) {
                Ok(loaded) => match tls.reload(&loaded.material) {
                    Ok(()) => {
                        revocations.replace(loaded.revoked);
                        trust_change = loaded.next_trust_change;
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
                "closed connections with revoked, expired or untrusted certificates"
            );
        }
    }
}
