//! `openshell-pki`: the gateway's certificate authority.
//!
//! Owns: creating a PKI directory (CA, gateway certificate, CRL, index), issuing user and
//! sandbox client certificates, revocation (CRL + index), CA and server rotation, inspecting
//! certificates, client credential bundles, and the file-writing rules every credential
//! follows (`fs`: atomic, 0600 keys in 0700 directories).
//! Does not own: TLS configuration or verification at connection time (the transport builds
//! rustls verifiers from [`PkiDir::client_ca_bundle`] and [`PkiDir::crl_ders`]), deciding
//! what a role may do (the gateway), or the CLI's gateway registry.
//!
//! ```text
//! init ──> Ca::load ──> issue_client / mint_sandbox_credential   (index.json)
//!                  ├──> revoke                                     (crl.pem, index.json)
//!                  ├──> issue_server  (rotate-server)              (server/tls.*, crl, index)
//!                  └──> rotate_ca     (old CA trusted for overlap) (everything)
//! gateway: PkiDir::{client_ca_bundle, crl_ders, revoked_serials, next_trust_change};
//!          reload when index.json changes (it is written last).
//! ```

pub mod bundle;
mod ca;
mod der;
mod dir;
mod duration;
mod error;
pub mod fs;
mod index;
mod inspect;
mod keys;
mod names;
mod pem;
mod serial;

pub use bundle::{ClientBundle, ExistingCredential, install_bundle, read_bundle, write_bundle};
pub use ca::{
    Ca, DEFAULT_CA_OVERLAP, DEFAULT_CA_VALIDITY, DEFAULT_CLIENT_VALIDITY, DEFAULT_SERVER_VALIDITY,
    InitOptions, IssuedCert, RotatedCa, init,
};
pub use dir::{PkiDir, default_gateway_state_dir, default_pki_dir};
pub use duration::Duration;
pub use error::PkiError;
pub use index::{
    CaRecord, CertKind, CertStatus, EXPIRING_SOON_DAYS, EXPIRING_SOON_PERCENT, Index, IndexEntry,
    format_time,
};
pub use inspect::{CertInfo, inspect, inspect_bytes, inspect_path};
pub use keys::KeyType;
pub use names::{DEFAULT_SERVER_SANS, SANDBOX_CN_PREFIX, SANDBOX_OU, San, host_name, server_sans};
pub use pem::certificates as parse_certificates;
pub use serial::Serial;

#[cfg(test)]
mod tests;
