//! `openshell whoami`: who the active gateway says you are: subject, roles, how you were
//! authenticated, and the certificate behind it (serial and expiry).

use std::process::ExitCode;

use openshell_proto::GetCurrentUserRequest;
use openshell_proto::open_shell_client::OpenShellClient;
use serde::Serialize;

use crate::CliError;
use crate::args::GlobalArgs;
use crate::output::{OutputFormat, emit};

#[derive(Debug, clap::Args)]
pub struct WhoamiArgs {
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct Identity {
    gateway: String,
    subject: String,
    roles: Vec<String>,
    /// `mtls`, `edge` (behind an authenticating proxy) or `local` (plaintext loopback).
    auth: String,
    certificate_serial: String,
    /// RFC 3339; empty without a certificate.
    certificate_expires: String,
}

pub async fn run(args: WhoamiArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let gw = crate::config::resolve(global)?;
    let conn = crate::client::connect(&gw, global).await?;
    let me = match OpenShellClient::new(conn.conn.channel())
        .get_current_user(GetCurrentUserRequest {})
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(conn.rpc_error(s).await),
    };
    conn.conn.close().await;
    let auth = match me.auth.as_str() {
        // The gateway calls a plaintext loopback caller's mechanism "none".
        "none" => "local".to_string(),
        other => other.to_string(),
    };
    let expires = if me.certificate_serial.is_empty() || auth == "local" {
        String::new()
    } else {
        rfc3339(me.certificate_not_after_ms)
    };
    let identity = Identity {
        gateway: gw.name.clone(),
        subject: me.subject,
        roles: me.roles,
        auth,
        certificate_serial: if expires.is_empty() {
            String::new()
        } else {
            me.certificate_serial
        },
        certificate_expires: expires,
    };
    emit(args.output, &identity, render)?;
    Ok(ExitCode::SUCCESS)
}

fn render(i: &Identity) -> String {
    let mut out = format!(
        "Subject: {}\nRoles: {}\nAuthenticated: {}\nGateway: {}\n",
        i.subject,
        if i.roles.is_empty() {
            "user (none named)".to_string()
        } else {
            i.roles.join(", ")
        },
        match i.auth.as_str() {
            "mtls" => "client certificate (mTLS)",
            "edge" => "edge proxy (browser login)",
            "local" => "local plaintext gateway (anonymous admin)",
            other => other,
        },
        i.gateway,
    );
    if !i.certificate_serial.is_empty() {
        out.push_str(&format!(
            "Certificate: serial {}, expires {}\n",
            i.certificate_serial, i.certificate_expires
        ));
    }
    out
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp.
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    crate::output::rfc3339(t)
}
