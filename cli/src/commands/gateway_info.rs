//! `openshell gateway info`: what the gateway reports about itself (version, health,
//! compute drivers, listen addresses) and the path this command reached it by.

use std::process::ExitCode;

use openshell_proto::GetGatewayInfoRequest;
use openshell_proto::open_shell_client::OpenShellClient;
use openshell_transport::ZeroRtt;
use serde::Serialize;

use crate::CliError;
use crate::args::GlobalArgs;
use crate::output::{OutputFormat, emit};

#[derive(Debug, Serialize)]
struct Info {
    gateway: String,
    server: String,
    auth: String,
    status: String,
    version: String,
    listen_addresses: Vec<String>,
    compute_drivers: Vec<Driver>,
    transport: Transport,
    caller: String,
}

#[derive(Debug, Serialize)]
struct Driver {
    name: String,
    active: bool,
    driver_version: String,
    health: String,
}

#[derive(Debug, Serialize)]
struct Transport {
    kind: &'static str,
    zero_rtt: bool,
}

pub async fn run(output: OutputFormat, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let Some(gw) = crate::config::resolve_optional(global)? else {
        return Err(CliError::hint(
            "No gateway configured.",
            "Register a gateway with: openshell gateway add <endpoint>",
        ));
    };
    let conn = crate::client::connect(&gw, global).await?;
    let reply = OpenShellClient::new(conn.conn.channel())
        .get_gateway_info(GetGatewayInfoRequest {})
        .await;
    let info = match reply {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            return Err(CliError::msg(
                "gateway info is not supported by this gateway version",
            ));
        }
        Err(s) if s.code() == tonic::Code::PermissionDenied => {
            return Err(CliError::msg(format!(
                "gateway info requires admin privileges: {}",
                s.message()
            )));
        }
        Err(s) => return Err(conn.rpc_error(s).await),
    };
    let zero_rtt = conn.conn.zero_rtt_settled().await == ZeroRtt::Accepted;
    let status = openshell_proto::ServingStatus::try_from(info.status)
        .map(|s| match s {
            openshell_proto::ServingStatus::Healthy => "healthy",
            openshell_proto::ServingStatus::Degraded => "degraded",
            openshell_proto::ServingStatus::Unhealthy => "unhealthy",
            openshell_proto::ServingStatus::Unspecified => "unknown",
        })
        .unwrap_or("unknown");
    let report = Info {
        gateway: gw.name.clone(),
        server: gw.endpoint.clone(),
        auth: gw.auth.as_str().to_string(),
        status: status.to_string(),
        version: info.version,
        listen_addresses: info.listen_addresses,
        compute_drivers: info
            .compute_drivers
            .into_iter()
            .map(|d| Driver {
                name: d.name,
                active: d.active,
                driver_version: d.driver_version,
                health: d.health,
            })
            .collect(),
        transport: Transport {
            kind: conn.conn.transport().as_str(),
            zero_rtt,
        },
        caller: info.caller.map(|c| c.subject).unwrap_or_default(),
    };
    conn.conn.close().await;
    emit(output, &report, render)?;
    Ok(ExitCode::SUCCESS)
}

fn render(i: &Info) -> String {
    let mut out = format!(
        "Gateway Info\n  Gateway: {}\n  Server: {}\n  Auth: {}\n  Status: {}\n  Version: {}\n  Listening: {}\n  Transport: {}{}\n  Caller: {}\n  Compute drivers:",
        i.gateway,
        i.server,
        i.auth,
        i.status,
        i.version,
        i.listen_addresses.join(", "),
        i.transport.kind.to_uppercase(),
        if i.transport.zero_rtt { " (0-RTT)" } else { "" },
        i.caller,
    );
    if i.compute_drivers.is_empty() {
        out.push_str(" none in this gateway build\n");
    } else {
        out.push('\n');
        for d in &i.compute_drivers {
            if d.active {
                out.push_str(&format!(
                    "    {} (active)  version {}  health {}\n",
                    d.name,
                    if d.driver_version.is_empty() {
                        "unknown"
                    } else {
                        &d.driver_version
                    },
                    d.health
                ));
            } else {
                out.push_str(&format!("    {} (compiled in)\n", d.name));
            }
        }
        if !i.compute_drivers.iter().any(|d| d.active) {
            out.push_str(
                "    no driver is active: no container runtime answered when the gateway started\n",
            );
        }
    }
    out
}
