//! The policy document, field for field as OpenShell's YAML schema has it.
//!
//! Everything here comes out of [`Policy::parse`](crate::Policy::parse) already validated
//! and normalized: sets where order means nothing (paths, binaries, ports, IP ranges), hosts
//! in lower case, keywords as enums. So two documents that mean the same policy compare
//! equal and print to the same canonical text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

macro_rules! keywords {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in the order the schema documents them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling in a policy file.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub(crate) fn from_text(text: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }

            pub(crate) fn expected() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The parts fixed when a sandbox is created: changing any of them on a running sandbox
/// is refused ([`Policy::check_update`](crate::Policy::check_update)).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StaticPolicy {
    /// `filesystem_policy`; `None` when the document has none (the supervisor then applies
    /// the default policy's).
    pub filesystem: Option<FilesystemPolicy>,
    /// `landlock`; `None` when absent (Landlock then runs `best_effort`).
    pub landlock: Option<LandlockPolicy>,
    /// `process`; `None` when absent (the driver picks the user, `sandbox` today).
    pub process: Option<ProcessPolicy>,
}

/// `filesystem_policy`: what the workload may read and write. Paths listed nowhere are
/// inaccessible once Landlock applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilesystemPolicy {
    /// Adds the sandbox's working directory to `read_write`. Absent means false.
    pub include_workdir: bool,
    /// Absolute, normalized paths (no `.`, `..`, repeated or trailing `/`).
    pub read_only: BTreeSet<String>,
    /// As `read_only`; never `/`, never a path also in `read_only`.
    pub read_write: BTreeSet<String>,
}

keywords! {
    /// `landlock.compatibility`.
    LandlockCompatibility {
        /// Apply what the kernel supports; skip missing paths, with a warning.
        BestEffort = "best_effort",
        /// Refuse to start the workload unless every rule applies.
        HardRequirement = "hard_requirement",
    }
}

/// `landlock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandlockPolicy {
    /// `best_effort` when the mapping leaves it out.
    pub compatibility: LandlockCompatibility,
}

/// A workload user or group: a name, or a numeric id that is never 0 (root) nor
/// 4294967295 (the kernel's "no id").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// A name to look up in the image's `/etc/passwd` or `/etc/group` (never `root`; the
    /// supervisor still refuses a name that maps to id 0).
    Name(String),
    /// A numeric id, 1 to 4294967294.
    Id(u32),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Name(n) => f.write_str(n),
            Identity::Id(id) => write!(f, "{id}"),
        }
    }
}

/// `process`: who the workload runs as. Each field left out is chosen by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessPolicy {
    pub run_as_user: Option<Identity>,
    pub run_as_group: Option<Identity>,
}

/// The parts that can change on a running sandbox.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DynamicPolicy {
    /// `network_policies`, by key. Empty means no network at all.
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// `network_middlewares`, by key.
    pub network_middlewares: BTreeMap<String, NetworkMiddleware>,
}

/// One `network_policies` entry: these binaries may reach these endpoints.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkPolicy {
    /// Display name for logs; the key when absent.
    pub name: Option<String>,
    /// At least one.
    pub endpoints: Vec<Endpoint>,
    /// Executable paths or globs (`*`, `**`), all absolute. Empty lets no binary through.
    pub binaries: BTreeSet<String>,
}

keywords! {
    /// `endpoints[].protocol`. Absent means an L4 passthrough through the explicit proxy.
    Protocol {
        Rest = "rest",
        Websocket = "websocket",
        Graphql = "graphql",
        Sql = "sql",
        JsonRpc = "json-rpc",
        Mcp = "mcp",
        /// Transparent TCP with policy DNS; no inspection.
        Tcp = "tcp",
    }
}

impl Protocol {
    /// Whether traffic is inspected at L7 (everything but `tcp`).
    pub fn is_l7(self) -> bool {
        self != Protocol::Tcp
    }
}

keywords! {
    /// `endpoints[].tls`. Absent means TLS is detected and terminated for inspection.
    TlsMode {
        /// Do not detect or terminate TLS.
        Skip = "skip",
        /// Deprecated upstream; accepted and without effect.
        Terminate = "terminate",
        /// Deprecated upstream; accepted and without effect.
        Passthrough = "passthrough",
    }
}

keywords! {
    /// `endpoints[].enforcement`.
    Enforcement {
        Enforce = "enforce",
        /// Log violations, let traffic through.
        Audit = "audit",
    }
}

keywords! {
    /// `endpoints[].access`: a preset instead of `rules`.
    Access {
        ReadOnly = "read-only",
        ReadWrite = "read-write",
        Full = "full",
    }
}

keywords! {
    /// `endpoints[].persisted_queries` (GraphQL).
    PersistedQueries {
        Deny = "deny",
        AllowRegistered = "allow_registered",
    }
}

keywords! {
    /// `endpoints[].credential_signing`.
    CredentialSigning {
        Sigv4 = "sigv4",
        Sigv4Body = "sigv4:body",
        Sigv4NoBody = "sigv4:no_body",
    }
}

/// An `allowed_ips` entry: an address, or a network in CIDR notation (host bits cleared;
/// a full-length prefix is stored as the bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    pub addr: IpAddr,
    /// `None` for a single address.
    pub prefix: Option<u8>,
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// A query, tool or parameter matcher: one glob, or `{any: [globs]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    Glob(String),
    Any(Vec<String>),
}

/// An MCP `params` matcher: a matcher, or a mapping of nested parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamMatcher {
    Matcher(Matcher),
    Object(BTreeMap<String, ParamMatcher>),
}

/// The body of an allow rule (`rules[].allow`) or of a deny rule (`deny_rules[]`); which
/// fields apply depends on the endpoint's protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct L7Match {
    pub method: Option<String>,
    pub path: Option<String>,
    /// SQL statements (`protocol: sql`).
    pub command: Option<String>,
    pub query: BTreeMap<String, Matcher>,
    pub operation_type: Option<String>,
    pub operation_name: Option<String>,
    pub fields: Vec<String>,
    pub tool: Option<Matcher>,
    pub params: BTreeMap<String, ParamMatcher>,
}

impl L7Match {
    /// Whether the rule names nothing to match (an allow rule like that allows nothing).
    pub fn is_empty(&self) -> bool {
        self == &L7Match::default()
    }
}

/// A `graphql_persisted_queries` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphqlOperation {
    pub operation_type: String,
    pub operation_name: Option<String>,
    pub fields: Vec<String>,
}

/// `credential_binding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialBinding {
    /// The attached provider whose static credentials this endpoint may receive.
    pub provider: String,
}

/// `json_rpc` endpoint options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonRpcOptions {
    /// Defaults to 65536 when absent.
    pub max_body_bytes: Option<u32>,
}

/// `mcp` endpoint options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct McpOptions {
    /// Defaults to 65536 when absent.
    pub max_body_bytes: Option<u32>,
    /// Defaults to true when absent.
    pub strict_tool_names: Option<bool>,
    /// Defaults to false when absent.
    pub allow_all_known_mcp_methods: Option<bool>,
}

/// One `endpoints` entry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Endpoint {
    /// Lower case; a wildcard only in the first label. `None` only for a non-TCP endpoint
    /// constrained by `allowed_ips`.
    pub host: Option<String>,
    /// `port`, or `ports`: at least one, each 1 to 65535.
    pub ports: BTreeSet<u16>,
    pub path: Option<String>,
    pub protocol: Option<Protocol>,
    pub tls: Option<TlsMode>,
    pub enforcement: Option<Enforcement>,
    pub access: Option<Access>,
    /// The `allow` bodies of `rules`.
    pub rules: Vec<L7Match>,
    pub deny_rules: Vec<L7Match>,
    pub allowed_ips: BTreeSet<IpRange>,
    pub allow_encoded_slash: bool,
    pub websocket_credential_rewrite: bool,
    pub request_body_credential_rewrite: bool,
    pub allow_uninspected_credentials: bool,
    pub persisted_queries: Option<PersistedQueries>,
    pub graphql_persisted_queries: BTreeMap<String, GraphqlOperation>,
    pub graphql_max_body_bytes: Option<u32>,
    pub credential_signing: Option<CredentialSigning>,
    pub signing_service: Option<String>,
    pub signing_region: Option<String>,
    pub credential_binding: Option<CredentialBinding>,
    pub json_rpc: Option<JsonRpcOptions>,
    pub mcp: Option<McpOptions>,
}

keywords! {
    /// `network_middlewares.*.on_error`.
    OnError {
        FailClosed = "fail_closed",
        FailOpen = "fail_open",
    }
}

/// One `network_middlewares` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkMiddleware {
    pub name: Option<String>,
    /// The implementation (`openshell/...` for built-ins).
    pub middleware: String,
    /// Lower runs first; unique in a policy. 0 when absent.
    pub order: i32,
    /// Implementation-owned settings, checked by the middleware itself.
    pub config: BTreeMap<String, Value>,
    /// `fail_closed` when absent.
    pub on_error: Option<OnError>,
    /// Host globs; at least one.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// A free-form value (a middleware's `config`). Numbers are finite.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}
