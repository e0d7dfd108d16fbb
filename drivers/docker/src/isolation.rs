//! What keeps a sandbox container apart from the others and from its own credential, as
//! pure functions the engine applies:
//!
//! - **Credential**: the files of [`Credentials`] go into [`CREDENTIAL_DIR`] as a tar stream
//!   put into the created container before it starts (root-owned, the directories 0700 and
//!   the files 0400), never in its environment or spec, so `docker inspect` does not show
//!   them and only the supervisor (root) can read them.
//! - **Network**: each sandbox gets a bridge network of its own, a /28 from
//!   [`SUBNET_POOL`], so no sandbox reaches another's ports. A sandbox needs no inbound
//!   connection at all (its supervisor dials the gateway and users reach it through that
//!   session), so nothing else is lost. An operator who names a shared network
//!   (`ContainerSettings::network`) gives this up for that network.
//! - **Privileges**: every capability is dropped except [`KEPT_CAPABILITIES`], and
//!   `no-new-privileges` is set, so a setuid binary in the image gives nothing back.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use openshell_drivers::{CREDENTIAL_DIR, Credentials, SUPERVISOR_CAPABILITIES, SandboxId};

/// Kept when all others are dropped (see [`SUPERVISOR_CAPABILITIES`]).
pub const KEPT_CAPABILITIES: [&str; 4] = SUPERVISOR_CAPABILITIES;

/// Security options of every sandbox container.
pub const SECURITY_OPT: [&str; 1] = ["no-new-privileges:true"];

/// Per-sandbox networks are /28s of this range (4096 of them), away from the runtimes'
/// default pools (Docker's 172.17.0.0/12 and 192.168.0.0/16, Podman's 10.88.0.0/16 and
/// 10.89.0.0/16).
pub const SUBNET_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 213, 0, 0), 16);
const SUBNET_PREFIX: u8 = 28;

/// The name of a sandbox's own network.
pub fn network_name(prefix: &str, id: &SandboxId) -> String {
    format!("{prefix}net-{id}")
}

/// The `attempt`-th candidate subnet for a sandbox: a start derived from its id, then the
/// following /28s, so concurrent creates rarely pick the same one and a taken one (the
/// runtime refuses overlapping subnets) is passed over.
pub fn candidate_subnet(id: &SandboxId, attempt: u32) -> String {
    let (base, bits) = SUBNET_POOL;
    let count = 1u32 << (SUBNET_PREFIX - bits);
    let start = id.as_str().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let index = start.wrapping_add(attempt) % count;
    let addr = u32::from(base) + (index << (32 - SUBNET_PREFIX));
    format!("{}/{SUBNET_PREFIX}", Ipv4Addr::from(addr))
}

/// Whether the runtime refused a network because its subnet overlaps another one.
pub fn is_subnet_taken(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("overlap") || m.contains("already used") || m.contains("already in use")
}

/// The tar stream that creates [`CREDENTIAL_DIR`] with `credentials` in it, extracted at `/`.
pub fn credential_tar(credentials: &Credentials) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = String::new();
    for part in CREDENTIAL_DIR.trim_start_matches('/').split('/') {
        dir.push_str(part);
        dir.push('/');
        // `/run` exists in every image and keeps its mode; what is below it is ours.
        let mode = if dir == "run/" { 0o755 } else { 0o700 };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, &dir, std::io::empty())?;
    }
    for (name, contents) in credentials.files() {
        let mut h = header(tar::EntryType::Regular, 0o400, contents.len() as u64);
        tar.append_data(&mut h, format!("{dir}{name}"), contents)?;
    }
    tar.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(0);
    h
}

/// Labels of a sandbox network: the container's ownership labels, so the reconcile finds
/// and removes a network left behind.
pub fn network_labels(container_labels: &HashMap<String, String>) -> HashMap<String, String> {
    container_labels
        .iter()
        .filter(|(k, _)| k.starts_with(openshell_drivers::LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_28s_of_the_pool_and_attempts_move_on() {
        let id = SandboxId::new("abc").unwrap();
        let a = candidate_subnet(&id, 0);
        let b = candidate_subnet(&id, 1);
        assert_ne!(a, b);
        for s in [&a, &b] {
            assert!(s.starts_with("10.213.") && s.ends_with("/28"), "{s}");
            let last: u32 = s
                .split('/')
                .next()
                .unwrap()
                .rsplit('.')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(last % 16, 0, "{s}");
        }
        assert_eq!(a, candidate_subnet(&id, 0));
        assert!(is_subnet_taken(
            "Pool overlaps with other one on this address space"
        ));
        assert!(!is_subnet_taken("no such image"));
    }

    #[test]
    fn the_credential_archive_is_root_only() {
        let mut c = Credentials::default();
        c.insert("tls.key", "PRIVATE").unwrap();
        let bytes = credential_tar(&c).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("run/".into(), 0o755, 0),
                ("run/openshell/".into(), 0o700, 0),
                ("run/openshell/credentials/".into(), 0o700, 0),
                ("run/openshell/credentials/tls.key".into(), 0o400, 0),
            ]
        );
    }
}
