//! The mTLS credentials of one gateway in the user layer (`gateways/<name>/mtls/`): what is
//! installed there, and installing a bundle file. Parsing, checking (key matches certificate,
//! certificate chains to the CA, client usage) and the atomic install belong to
//! `openshell_pki::bundle`; this module only adds what `gateway add` needs around them.

use std::path::Path;

use openshell_pki::bundle::{self as pki_bundle, ClientBundle};
use time::OffsetDateTime;

use crate::CliError;

pub use openshell_pki::bundle::{CA_FILE, CERT_FILE, KEY_FILE};

/// What an `mtls/` directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// None of the three files.
    Absent,
    /// Some files are missing (listed).
    Partial(Vec<&'static str>),
    /// All three files; when the client certificate expires (`None` if it cannot be read).
    Complete { not_after: Option<OffsetDateTime> },
}

/// Inspects `mtls_dir`.
pub fn inspect(mtls_dir: &Path) -> Installed {
    let files = [CA_FILE, CERT_FILE, KEY_FILE];
    let missing: Vec<&'static str> = files
        .into_iter()
        .filter(|f| !mtls_dir.join(f).is_file())
        .collect();
    if missing.len() == files.len() {
        Installed::Absent
    } else if !missing.is_empty() {
        Installed::Partial(missing)
    } else {
        Installed::Complete {
            not_after: pki_bundle::existing_credential(mtls_dir).map(|c| c.not_after),
        }
    }
}

/// Reads and checks a bundle file (one 0600 PEM file: CA certificate, client certificate,
/// private key, any order).
pub fn read_bundle(path: &Path) -> Result<ClientBundle, CliError> {
    pki_bundle::read_bundle(path).map_err(|e| {
        CliError::hint(
            format!("invalid mTLS bundle {}: {e}", path.display()),
            "A bundle is one PEM file (mode 0600) holding the CA certificate, the client certificate and its private key, as written by: openshell pki issue --bundle FILE",
        )
    })
}

/// Installs `bundle` as `mtls_dir`, refusing to replace a still-valid credential unless
/// `force`, and refusing an expired client certificate.
pub fn install(bundle: &ClientBundle, mtls_dir: &Path, force: bool) -> Result<(), CliError> {
    let now = OffsetDateTime::now_utc();
    let not_after = bundle.describe()?.not_after;
    if not_after <= now {
        return Err(CliError::hint(
            format!(
                "the client certificate in the bundle expired on {}",
                openshell_pki::format_time(not_after)
            ),
            "Issue a new one with: openshell pki issue --bundle FILE",
        ));
    }
    pki_bundle::check_replace(mtls_dir, force, now)?;
    pki_bundle::install_bundle(bundle, mtls_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let mtls = dir.path().join("mtls");
        assert_eq!(inspect(&mtls), Installed::Absent);
        std::fs::create_dir(&mtls).unwrap();
        std::fs::write(mtls.join(CA_FILE), "x").unwrap();
        assert_eq!(
            inspect(&mtls),
            Installed::Partial(vec![CERT_FILE, KEY_FILE])
        );
        std::fs::write(mtls.join(CERT_FILE), "not a cert").unwrap();
        std::fs::write(mtls.join(KEY_FILE), "k").unwrap();
        assert_eq!(inspect(&mtls), Installed::Complete { not_after: None });
    }
}
