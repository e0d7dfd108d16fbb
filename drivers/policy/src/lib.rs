//! Sandbox policies: the document model in OpenShell's YAML schema, shared by the gateway
//! (which validates and stores revisions), the CLI (which reads `--policy FILE`) and the
//! supervisor (which enforces them).
//!
//! A policy written for OpenShell loads here unchanged: `version: 1`, `filesystem_policy`,
//! `landlock`, `process`, `network_policies` and `network_middlewares`, with every field of
//! upstream's schema (`docs/reference/policy-schema.mdx` in NVIDIA/OpenShell). What this
//! crate refuses, it refuses with one [`PolicyError`] naming the file, the line and column,
//! and the field path:
//!
//! ```text
//! policy.yaml:12:15: network_policies.github.endpoints[0].port: 70000 is not a port (1-65535)
//! ```
//!
//! # What it owns, and what it does not
//!
//! It owns parsing, validation, the default policy ([`Policy::default_for_sandbox`]), the
//! split into a [`StaticPolicy`] (fixed at create) and a [`DynamicPolicy`] (the network,
//! changeable on a running sandbox, [`Policy::check_update`]), and revisions' canonical
//! text and hash ([`Policy::to_canonical_yaml`], [`Policy::hash`]).
//!
//! It does no I/O: callers pass the text and the name to report it under. It enforces
//! nothing: Landlock, seccomp and the user switch live in the supervisor, the proxy and
//! OPA in the network crate. It does not merge layers (global, sandbox, provider) yet.
//!
//! ```text
//!   bytes --yaml.rs--> positioned nodes --parse.rs--> Policy --canonical.rs--> text, hash
//!         (saphyr-parser events,            (schema, types,        (sorted, quoted,
//!          size/depth/alias limits)          contradictions)        defaults omitted)
//! ```

mod canonical;
mod error;
mod model;
mod parse;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest, Sha256};

pub use error::PolicyError;
pub use model::{
    Access, CredentialBinding, CredentialSigning, DynamicPolicy, Endpoint, Enforcement,
    FilesystemPolicy, GraphqlOperation, Identity, IpRange, JsonRpcOptions, L7Match,
    LandlockCompatibility, LandlockPolicy, Matcher, McpOptions, NetworkMiddleware, NetworkPolicy,
    OnError, ParamMatcher, PersistedQueries, ProcessPolicy, Protocol, StaticPolicy, TlsMode, Value,
};
pub use parse::{MAX_FILESYSTEM_PATHS, MAX_MIDDLEWARES, MAX_PATH_BYTES, MAX_SELECTOR_PATTERNS};
pub use yaml::{MAX_BYTES, MAX_DEPTH, MAX_NODES};

/// The user and group the workload runs as when nothing else is said: the supervisor's
/// `sandbox` (uid and gid 1000, home `/sandbox`, when the image has no such user).
pub const DEFAULT_WORKLOAD_USER: &str = "sandbox";

/// A validated policy. The only ways to get one are [`Policy::parse`] and
/// [`Policy::default_for_sandbox`], so holding one means it passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    statics: StaticPolicy,
    dynamic: DynamicPolicy,
}

/// SHA-256 of a policy's canonical text: equal for equal policies, however written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyHash(pub [u8; 32]);

impl fmt::Display for PolicyHash {
    /// Lower-case hex, 64 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Policy {
    pub(crate) fn from_validated(statics: StaticPolicy, dynamic: DynamicPolicy) -> Policy {
        Policy { statics, dynamic }
    }

    /// Parses and validates a policy document. `file` is the name errors report (a path,
    /// or `<stdin>`); it is not opened.
    pub fn parse(file: &str, text: &str) -> Result<Policy, PolicyError> {
        parse::policy(file, text)
    }

    /// As [`Policy::parse`], for bytes that may not be UTF-8.
    pub fn parse_bytes(file: &str, bytes: &[u8]) -> Result<Policy, PolicyError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Policy::parse(file, text),
            Err(e) => {
                let before = &bytes[..e.valid_up_to()];
                let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
                Err(PolicyError::Syntax {
                    file: file.to_string(),
                    line,
                    column: col,
                    message: "the policy is not UTF-8 text; save it as UTF-8".into(),
                })
            }
        }
    }

    /// The policy a sandbox gets when it is created without one. Restrictive:
    ///
    /// - `filesystem_policy`: the system directories read-only (`/bin`, `/sbin`, `/usr`,
    ///   `/lib`, `/lib64`, `/etc`, `/opt`, `/app` where images keep their programs, `/proc`,
    ///   `/var/log`, `/dev/urandom` and `/dev/random`); writable: the working directory
    ///   (`include_workdir`), the workload's home `/sandbox`, `/tmp`, `/dev/null` and the
    ///   terminals (`/dev/pts`, `/dev/tty`) that `sandbox connect` and `ssh` sessions use.
    ///   Everything else (`/root`, `/var/lib`, `/sys`, other devices) is out of reach;
    /// - `landlock: best_effort`: Landlock applies what the kernel supports and the paths
    ///   that exist (an image without `/app` still starts), warning about the rest;
    /// - `process`: `sandbox` for both user and group;
    /// - no `network_policies`: no network (the network issue adds its own defaults).
    ///
    /// Changing this list changes every sandbox created without a policy: a path removed
    /// breaks images that need it, a path added widens every such sandbox.
    pub fn default_for_sandbox() -> Policy {
        let set = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<BTreeSet<_>>();
        let sandbox = Some(Identity::Name(DEFAULT_WORKLOAD_USER.into()));
        Policy {
            statics: StaticPolicy {
                filesystem: Some(FilesystemPolicy {
                    include_workdir: true,
                    read_only: set(&[
                        "/app",
                        "/bin",
                        "/dev/random",
                        "/dev/urandom",
                        "/etc",
                        "/lib",
                        "/lib64",
                        "/opt",
                        "/proc",
                        "/sbin",
                        "/usr",
                        "/var/log",
                    ]),
                    read_write: set(&["/dev/null", "/dev/pts", "/dev/tty", "/sandbox", "/tmp"]),
                }),
                landlock: Some(LandlockPolicy {
                    compatibility: LandlockCompatibility::BestEffort,
                }),
                process: Some(ProcessPolicy {
                    run_as_user: sandbox.clone(),
                    run_as_group: sandbox,
                }),
            },
            dynamic: DynamicPolicy {
                network_policies: BTreeMap::new(),
                network_middlewares: BTreeMap::new(),
            },
        }
    }

    /// The parts fixed at create: filesystem, Landlock, process.
    pub fn statics(&self) -> &StaticPolicy {
        &self.statics
    }

    /// The parts that may change on a running sandbox: network policies and middlewares.
    pub fn network(&self) -> &DynamicPolicy {
        &self.dynamic
    }

    /// The canonical text: block YAML with sorted keys, quoted strings and no defaults.
    /// It parses back to an equal policy; equal policies print the same text.
    pub fn to_canonical_yaml(&self) -> String {
        canonical::to_yaml(self)
    }

    /// SHA-256 of [`Policy::to_canonical_yaml`], the hash a revision carries.
    pub fn hash(&self) -> PolicyHash {
        PolicyHash(Sha256::digest(self.to_canonical_yaml().as_bytes()).into())
    }

    /// The static fields `next` changes, as field paths (`filesystem_policy.read_only`,
    /// `process.run_as_user`; the section's name alone when one of the two has none).
    /// Empty when only the network changes.
    pub fn static_changes(&self, next: &Policy) -> Vec<&'static str> {
        let mut out = Vec::new();
        let (a, b) = (&self.statics, &next.statics);
        match (&a.filesystem, &b.filesystem) {
            (Some(x), Some(y)) => {
                if x.include_workdir != y.include_workdir {
                    out.push("filesystem_policy.include_workdir");
                }
                if x.read_only != y.read_only {
                    out.push("filesystem_policy.read_only");
                }
                if x.read_write != y.read_write {
                    out.push("filesystem_policy.read_write");
                }
            }
            (x, y) if x != y => out.push("filesystem_policy"),
            _ => {}
        }
        match (&a.landlock, &b.landlock) {
            (Some(x), Some(y)) if x != y => out.push("landlock.compatibility"),
            (x, y) if x != y => out.push("landlock"),
            _ => {}
        }
        match (&a.process, &b.process) {
            (Some(x), Some(y)) => {
                if x.run_as_user != y.run_as_user {
                    out.push("process.run_as_user");
                }
                if x.run_as_group != y.run_as_group {
                    out.push("process.run_as_group");
                }
            }
            (x, y) if x != y => out.push("process"),
            _ => {}
        }
        out
    }

    /// `Ok` when `next` may replace `self` on a running sandbox (it changes only the
    /// network); otherwise [`PolicyError::StaticChange`] naming what it changes.
    pub fn check_update(&self, next: &Policy) -> Result<(), PolicyError> {
        let fields = self.static_changes(next);
        if fields.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::StaticChange { fields })
        }
    }
}
