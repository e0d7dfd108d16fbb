//! The sandbox's credential as files that only its supervisor can read.
//!
//! The gateway mints a TLS credential and an SSH host key for each sandbox. They never go
//! into anything a user of the runtime or the workload can read: not the environment (it
//! shows in `docker inspect`, a Pod spec, and `/proc/1/environ`), not the command line, not
//! a label. Each backend delivers them as files into [`CREDENTIAL_DIR`] inside the sandbox,
//! owned by root, the directory 0700 and the files 0400:
//!
//! | backend | how |
//! |---|---|
//! | Docker, Podman | a tar stream put into the created container before it starts |
//! | Kubernetes | a Secret volume with `defaultMode: 0400` |
//! | MicroVM | the per-start initramfs (host copy 0600), moved onto the guest's `/run` tmpfs |
//!
//! The supervisor runs as root; the workload (main process, SSH and exec sessions) runs as
//! an unprivileged user with `no_new_privs`, so it cannot read them, and the supervisor
//! marks itself non-dumpable so its memory and `/proc/1/environ` are closed as well.

use std::collections::BTreeMap;
use std::fmt;

use crate::DriverError;

/// Where the files are inside the sandbox.
pub const CREDENTIAL_DIR: &str = "/run/openshell/credentials";
/// The gateway's CA bundle (PEM; not secret, kept beside the rest so it renews with it).
pub const CA_FILE: &str = "ca.pem";
/// The sandbox's client certificate chain (PEM).
pub const CERT_FILE: &str = "tls.crt";
/// The sandbox's private key (PEM).
pub const KEY_FILE: &str = "tls.key";
/// The SSH host key the gateway pinned for this sandbox (OpenSSH private key).
pub const SSH_HOST_KEY_FILE: &str = "ssh_host_key";

/// The capabilities a sandbox's supervisor keeps; every other one is dropped (and
/// `no-new-privileges` set) by every container backend. They let it switch the workload to
/// its user (SETUID, SETGID), prepare that user's home (CHOWN) and signal the workload's
/// processes (KILL). The workload itself runs with none. The network half of a sandbox
/// policy adds what the supervisor needs to build the workload's network namespace.
pub const SUPERVISOR_CAPABILITIES: [&str; 4] = ["CHOWN", "SETUID", "SETGID", "KILL"];

/// Lowercase hex SHA-256 of the DER of the first certificate in `pem`: how the gateway
/// announces its issuing CA and how a supervisor names the CA of its own credential.
pub fn ca_fingerprint(pem: &[u8]) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    Some(
        ring::digest::digest(&ring::digest::SHA256, der.as_ref())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Named secret files; `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials(BTreeMap<String, Vec<u8>>);

impl Credentials {
    /// Adds a file; `name` is a plain file name (`[a-z0-9._-]`, not `.` or `..`).
    pub fn insert(&mut self, name: &str, contents: impl Into<Vec<u8>>) -> Result<(), DriverError> {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if !plain {
            return Err(DriverError::InvalidSpec(format!(
                "credential file name {name:?} must be a plain file name of [a-z0-9._-]"
            )));
        }
        self.0.insert(name.to_string(), contents.into());
        Ok(())
    }

    /// The files, by name.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_contents_never_shown() {
        let mut c = Credentials::default();
        c.insert(KEY_FILE, "PRIVATE").unwrap();
        assert_eq!(format!("{c:?}"), "{\"tls.key\"}");
        for bad in ["", ".", "..", "a/b", "A", "x y"] {
            assert!(c.insert(bad, "x").is_err(), "{bad:?}");
        }
        assert_eq!(c.get(KEY_FILE), Some(&b"PRIVATE"[..]));
    }
}
