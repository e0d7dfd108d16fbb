//! The `openshell.v1` wire contract shared by the CLI, the gateway and the supervisor.
//!
//! Owns: the protobuf messages and the generated tonic client/server stubs. Does not own:
//! transport (see `openshell-transport`) or any behaviour behind the services.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("openshell.v1");
}

pub use v1::*;

/// Fully qualified gRPC paths of the RPCs that never change state. Only these may be served
/// from 0-RTT early data, before the handshake is confirmed; everything else waits.
pub const IDEMPOTENT_READS: &[&str] = &[
    "/openshell.v1.OpenShell/Health",
    "/openshell.v1.OpenShell/GetGatewayInfo",
    "/openshell.v1.OpenShell/GetCurrentUser",
    "/openshell.v1.OpenShell/GetSandbox",
    "/openshell.v1.OpenShell/ListSandboxes",
    "/openshell.v1.OpenShell/WatchSandboxes",
    "/openshell.v1.OpenShell/GetSandboxLogs",
    "/openshell.v1.OpenShell/GetProvider",
    "/openshell.v1.OpenShell/ListProviders",
    "/openshell.v1.OpenShell/GetSandboxPolicy",
    "/openshell.v1.OpenShell/ListSandboxPolicies",
    "/openshell.v1.OpenShell/GetInference",
    "/openshell.v1.Diagnostics/Ping",
    "/openshell.v1.Diagnostics/Download",
];

/// Unary idempotent reads with small answers. On a lossy QUIC path the client may send
/// these twice, on two streams a few milliseconds apart, and take the first answer
/// (request hedging): a lost packet then costs nothing instead of a retransmission timeout.
/// Streaming and bulk reads (watch, logs, download) are not hedged.
pub const HEDGEABLE_READS: &[&str] = &[
    "/openshell.v1.OpenShell/Health",
    "/openshell.v1.OpenShell/GetGatewayInfo",
    "/openshell.v1.OpenShell/GetCurrentUser",
    "/openshell.v1.OpenShell/GetSandbox",
    "/openshell.v1.OpenShell/ListSandboxes",
    "/openshell.v1.OpenShell/GetProvider",
    "/openshell.v1.OpenShell/ListProviders",
    "/openshell.v1.OpenShell/GetSandboxPolicy",
    "/openshell.v1.OpenShell/ListSandboxPolicies",
    "/openshell.v1.OpenShell/GetInference",
    "/openshell.v1.Diagnostics/Ping",
];

/// RPCs that answer without any authentication (reachability probes).
pub const PUBLIC_METHODS: &[&str] = &["/openshell.v1.OpenShell/Health"];

/// RPCs a sandbox supervisor may call with its per-sandbox credential; users may not.
pub const SUPERVISOR_SERVICE_PREFIX: &str = "/openshell.v1.Supervisor/";

/// Whether `path` (e.g. `/openshell.v1.OpenShell/Health`) may run in 0-RTT early data.
pub fn is_idempotent_read(path: &str) -> bool {
    IDEMPOTENT_READS.contains(&path)
}

/// Whether the client may hedge `path` (see [`HEDGEABLE_READS`]).
pub fn is_hedgeable(path: &str) -> bool {
    HEDGEABLE_READS.contains(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_list_names_real_methods() {
        // Each listed path must name a method that exists in the generated code, so a
        // rename in the .proto cannot silently leave a stale allow-list entry.
        let generated = [
            open_shell_server::SERVICE_NAME,
            diagnostics_server::SERVICE_NAME,
        ];
        for path in IDEMPOTENT_READS {
            let service = path.trim_start_matches('/').split('/').next().unwrap();
            assert!(
                generated.contains(&service),
                "{path} names an unknown service"
            );
        }
        assert!(is_idempotent_read("/openshell.v1.OpenShell/Health"));
        assert!(!is_idempotent_read(
            "/openshell.v1.OpenShell/CreateProvider"
        ));
        assert!(!is_idempotent_read("/openshell.v1.Diagnostics/Upload"));
    }

    #[test]
    fn only_idempotent_reads_are_hedged() {
        // A hedged request runs twice on the gateway: it must be a read.
        for path in HEDGEABLE_READS {
            assert!(is_idempotent_read(path), "{path} is hedged but not a read");
        }
        assert!(is_hedgeable("/openshell.v1.Diagnostics/Ping"));
        assert!(!is_hedgeable("/openshell.v1.OpenShell/WatchSandboxes"));
        assert!(!is_hedgeable("/openshell.v1.OpenShell/CreateSandbox"));
    }
}
