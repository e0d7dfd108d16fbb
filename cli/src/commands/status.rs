//! `openshell status`: is the gateway reachable, does it accept our credentials, which
//! version and which path. Reachability and authentication are reported separately; the
//! exit code is 0 only when connected and authenticated (or authentication not required).

use std::process::ExitCode;

use openshell_proto::open_shell_client::OpenShellClient;
use openshell_proto::{GetGatewayInfoRequest, HealthRequest};
use openshell_transport::{TransportError, TransportKind, ZeroRtt};
use serde::Serialize;

use crate::CliError;
use crate::args::GlobalArgs;
use crate::config::{AuthMode, ResolvedGateway};
use crate::output::{OutputFormat, emit};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct Report {
    gateway: String,
    endpoint: String,
    status: &'static str,
    authentication: Auth,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<Transport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

#[derive(Debug, Serialize)]
struct Auth {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct Transport {
    kind: &'static str,
    zero_rtt: bool,
    fallback: bool,
    /// Through the local connection agent (`kind` and `zero_rtt` are then its connection's).
    via_agent: bool,
}

pub async fn run(args: StatusArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let Some(gw) = crate::config::resolve_optional(global)? else {
        if args.output == OutputFormat::Table {
            crate::output::print_stdout(
                "Gateway Status\n  Status: No gateway configured.\n  Register a gateway with: openshell gateway add <endpoint>\n",
            )?;
        } else {
            emit(
                args.output,
                &serde_json::json!({"status": "not_configured"}),
                |_| String::new(),
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    // Missing or unreadable local credentials are the user's to fix, not a gateway state:
    // report them as an error with the command that fixes them.
    crate::client::client_config(&gw, global.transport)?;
    let report = probe(&gw, global).await;
    let ok = report.status == "connected"
        && matches!(
            report.authentication.status,
            "authenticated" | "not_required"
        );
    emit(args.output, &report, render)?;
    if let (false, Some(hint), OutputFormat::Table) = (ok, &report.hint, args.output) {
        eprintln!("{hint}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn auth_mode(gw: &ResolvedGateway) -> &'static str {
    match gw.auth {
        AuthMode::Mtls => "mTLS",
        AuthMode::Edge => "edge",
        AuthMode::Plaintext => "none",
    }
}

fn fix_hint(gw: &ResolvedGateway) -> String {
    match gw.auth {
        AuthMode::Edge => format!("Sign in again with: openshell gateway login {}", gw.name),
        _ => format!(
            "Issue a new client certificate with: openshell pki issue <user> --gateway {} --force",
            gw.name
        ),
    }
}

async fn probe(gw: &ResolvedGateway, global: &GlobalArgs) -> Report {
    let mut report = Report {
        gateway: gw.name.clone(),
        endpoint: gw.endpoint.clone(),
        status: "disconnected",
        authentication: Auth {
            status: "unverified",
            mode: None,
            reason: Some("gateway unreachable".into()),
        },
        version: None,
        transport: None,
        hint: None,
    };
    let failed_auth = |report: &mut Report, reason: String| {
        report.status = "connected";
        report.authentication = Auth {
            status: "failed",
            mode: Some(auth_mode(gw)),
            reason: Some(reason),
        };
        report.hint = Some(fix_hint(gw));
    };
    let conn = match crate::client::connect(gw, global).await {
        Ok(c) => c,
        Err(CliError::Transport(TransportError::Rejected(reason))) => {
            failed_auth(&mut report, reason);
            return report;
        }
        Err(CliError::Transport(TransportError::ServerCertificate(reason))) => {
            report.status = "connected";
            report.authentication = Auth {
                status: "failed",
                mode: Some(auth_mode(gw)),
                reason: Some(reason),
            };
            report.hint = Some(format!(
                "Check that {}/ca.crt is the CA of this gateway",
                gw.mtls_dir.display()
            ));
            return report;
        }
        Err(e) => {
            report.authentication.reason = Some(e.to_string());
            return report;
        }
    };
    // Both RPCs at once: a cold `status` costs one round trip of RPCs after connecting.
    let mut health_api = OpenShellClient::new(conn.conn.channel());
    let mut info_api = OpenShellClient::new(conn.conn.channel());
    let (health, info) = tokio::join!(
        health_api.health(HealthRequest {}),
        info_api.get_gateway_info(GetGatewayInfoRequest {})
    );
    match health {
        Ok(h) => {
            report.status = "connected";
            report.version = Some(h.into_inner().version);
        }
        // An authenticating proxy in front of the gateway answers 401 before any RPC.
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            failed_auth(&mut report, status.message().to_string());
            return report;
        }
        Err(status) => {
            match conn.rpc_error(status).await {
                CliError::Transport(TransportError::Rejected(reason)) => {
                    failed_auth(&mut report, reason)
                }
                other => report.authentication.reason = Some(other.to_string()),
            }
            return report;
        }
    }
    let zero_rtt = conn.conn.zero_rtt_settled().await == ZeroRtt::Accepted;
    report.transport = Some(Transport {
        kind: conn.conn.transport().as_str(),
        zero_rtt,
        fallback: conn.conn.transport() == TransportKind::Tcp,
        via_agent: conn.conn.via_agent(),
    });
    match info {
        Ok(_) => {
            report.authentication = match gw.auth {
                AuthMode::Plaintext => Auth {
                    status: "not_required",
                    mode: None,
                    reason: None,
                },
                _ => Auth {
                    status: "authenticated",
                    mode: Some(auth_mode(gw)),
                    reason: None,
                },
            };
        }
        Err(status) if status.code() == tonic::Code::PermissionDenied => {
            report.authentication = Auth {
                status: "authenticated",
                mode: Some(auth_mode(gw)),
                reason: Some(format!("authorization denied: {}", status.message())),
            };
        }
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            failed_auth(&mut report, status.message().to_string());
        }
        Err(status) => match conn.rpc_error(status).await {
            CliError::Transport(TransportError::Rejected(reason)) => {
                failed_auth(&mut report, reason)
            }
            other => {
                report.authentication = Auth {
                    status: "unverified",
                    mode: Some(auth_mode(gw)),
                    reason: Some(other.to_string()),
                }
            }
        },
    }
    conn.conn.close().await;
    report
}

fn render(r: &Report) -> String {
    let auth = match (
        r.authentication.status,
        &r.authentication.mode,
        &r.authentication.reason,
    ) {
        ("authenticated", Some(m), None) => format!("Authenticated ({m})"),
        ("authenticated", Some(m), Some(why)) => format!("Authenticated ({m}; {why})"),
        ("not_required", _, _) => "Not required".to_string(),
        ("failed", _, Some(why)) => format!("Failed ({why})"),
        (_, _, Some(why)) => format!("Unverified ({why})"),
        (s, _, None) => s.to_string(),
    };
    let mut out = format!(
        "Server Status\n  Gateway: {}\n  Endpoint: {}\n  Status: {}\n  Authentication: {}\n",
        r.gateway,
        r.endpoint,
        if r.status == "connected" {
            "Connected"
        } else {
            "Disconnected"
        },
        auth
    );
    if let Some(v) = &r.version {
        out.push_str(&format!("  Version: {v}\n"));
    }
    if let Some(t) = &r.transport {
        let agent = if t.via_agent { ", via agent" } else { "" };
        let path = match (t.kind, t.zero_rtt) {
            ("quic", true) => format!("QUIC (0-RTT{agent})"),
            ("quic", false) if t.via_agent => "QUIC (via agent)".to_string(),
            ("quic", false) => "QUIC".to_string(),
            _ => format!("TCP (fallback{agent})"),
        };
        out.push_str(&format!("  Transport: {path}\n"));
    }
    out
}
