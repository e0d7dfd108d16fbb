//! `openshell doctor check`: one line per check, `ok`, `warn` or `fail`, each failure with
//! what to do. Exit 0 when nothing failed.
//!
//! Checks: the config directory and key permissions, which gateway is active, the client
//! certificate's validity, QUIC (UDP) and TCP reachability of that gateway separately,
//! authentication, and the compute driver the gateway reports.

use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use openshell_proto::GetGatewayInfoRequest;
use openshell_proto::open_shell_client::OpenShellClient;
use openshell_transport::{Connector, PathHint};

use crate::CliError;
use crate::args::{GlobalArgs, TransportChoice};
use crate::config::{AuthMode, ResolvedGateway};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(subcommand)]
    pub command: DoctorCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DoctorCommand {
    /// Check configuration, credentials, reachability (UDP and TCP) and the compute driver.
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(String, Verdict, String)>,
}

impl Report {
    fn add(&mut self, name: &str, verdict: Verdict, detail: impl Into<String>) {
        self.lines.push((name.to_string(), verdict, detail.into()));
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, verdict, detail) in &self.lines {
            let word = match verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "warn",
                Verdict::Fail => "fail",
            };
            let dots = ".".repeat(24usize.saturating_sub(name.len()).max(2));
            out.push_str(&format!("{name} {dots} {word} ({detail})\n"));
        }
        let failed = self.failed();
        if failed == 0 {
            out.push_str("All checks passed.\n");
        } else {
            out.push_str(&format!("{failed} check(s) failed.\n"));
        }
        out
    }

    fn failed(&self) -> usize {
        self.lines.iter().filter(|l| l.1 == Verdict::Fail).count()
    }
}

pub async fn run(args: DoctorArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let DoctorCommand::Check = args.command;
    let mut report = Report { lines: Vec::new() };
    let gw = match crate::config::resolve_optional(global) {
        Ok(Some(gw)) => {
            report.add(
                "Gateway",
                Verdict::Ok,
                format!(
                    "{} at {} ({} entry)",
                    gw.name,
                    gw.endpoint,
                    gw.source.as_str()
                ),
            );
            Some(gw)
        }
        Ok(None) => {
            report.add(
                "Gateway",
                Verdict::Fail,
                "none selected: register one with `openshell gateway add <endpoint>`",
            );
            None
        }
        Err(e) => {
            report.add("Gateway", Verdict::Fail, e.to_string());
            None
        }
    };
    if let Some(gw) = &gw {
        check_files(gw, &mut report);
        check_network(gw, &mut report).await;
    }
    match crate::commands::ssh::find_ssh() {
        Ok(path) => report.add("SSH client", Verdict::Ok, path.display().to_string()),
        Err(_) => report.add(
            "SSH client",
            Verdict::Warn,
            "ssh is not installed: sandbox connect/exec/upload/download need it (sudo apt-get install openssh-client)",
        ),
    }
    crate::output::print_stdout(&report.render())?;
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_files(gw: &ResolvedGateway, report: &mut Report) {
    if gw.auth != AuthMode::Mtls {
        report.add(
            "Credentials",
            Verdict::Ok,
            format!("{} gateway: no client certificate needed", gw.auth),
        );
        return;
    }
    let dir = &gw.mtls_dir;
    match std::fs::metadata(dir) {
        Ok(m) if m.mode() & 0o077 != 0 => report.add(
            "Credential directory",
            Verdict::Fail,
            format!(
                "{} is open to other users (mode {:04o}): run `chmod 700 {}`",
                dir.display(),
                m.mode() & 0o777,
                dir.display()
            ),
        ),
        Ok(_) => report.add(
            "Credential directory",
            Verdict::Ok,
            dir.display().to_string(),
        ),
        Err(_) => {
            report.add(
                "Credential directory",
                Verdict::Fail,
                format!(
                    "{} does not exist: run `openshell pki issue <user> --gateway {}`",
                    dir.display(),
                    gw.name
                ),
            );
            return;
        }
    }
    let key = dir.join("tls.key");
    match openshell_pki::fs::read_secret(&key) {
        Ok(_) => report.add("Client key", Verdict::Ok, "owner-only"),
        Err(e) => report.add("Client key", Verdict::Fail, e.to_string()),
    }
    match openshell_pki::inspect_path(&dir.join("tls.crt"), None) {
        Ok(info) => {
            let who = info.subject_cn.clone().unwrap_or(info.subject.clone());
            let detail = format!("CN={who}, expires {}", info.not_after);
            let verdict = match info.status {
                openshell_pki::CertStatus::Valid => Verdict::Ok,
                openshell_pki::CertStatus::ExpiringSoon => Verdict::Warn,
                _ => Verdict::Fail,
            };
            let fix = match verdict {
                Verdict::Ok => String::new(),
                _ => format!(
                    "; renew with `openshell pki issue {who} --gateway {} --force`",
                    gw.name
                ),
            };
            report.add(
                "Client certificate",
                verdict,
                format!("{detail}, {}{fix}", info.status.as_str()),
            );
        }
        Err(e) => report.add("Client certificate", Verdict::Fail, e.to_string()),
    }
}

async fn check_network(gw: &ResolvedGateway, report: &mut Report) {
    let paths: &[(&str, TransportChoice, PathHint)] = if gw.auth == AuthMode::Mtls {
        &[
            ("QUIC (UDP)", TransportChoice::Quic, PathHint::QuicOnly),
            ("TCP fallback", TransportChoice::Tcp, PathHint::TcpOnly),
        ]
    } else {
        &[("TCP", TransportChoice::Tcp, PathHint::TcpOnly)]
    };
    let mut authenticated = None;
    for (name, choice, hint) in paths {
        let mut cfg = match crate::client::client_config(gw, *choice) {
            Ok(c) => c,
            Err(e) => {
                report.add(name, Verdict::Fail, e.to_string());
                continue;
            }
        };
        cfg.hint = *hint;
        cfg.connect_timeout = Duration::from_secs(5);
        let started = Instant::now();
        let result = match Connector::new(cfg) {
            Ok(c) => c.connect().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(conn) => {
                let rtt = started.elapsed();
                let info = OpenShellClient::new(conn.channel())
                    .get_gateway_info(GetGatewayInfoRequest {})
                    .await;
                match info {
                    Ok(info) => {
                        report.add(
                            name,
                            Verdict::Ok,
                            format!("connected in {:.1} ms", rtt.as_secs_f64() * 1000.0),
                        );
                        authenticated.get_or_insert(info.into_inner());
                    }
                    Err(status) => {
                        let why = crate::client::rpc_error(&conn, status).await;
                        report.add(name, Verdict::Fail, format!("reachable, but {why}"));
                    }
                }
                conn.close().await;
            }
            Err(e) => {
                let fix = if *hint == PathHint::QuicOnly {
                    "; UDP may be blocked on this network (commands fall back to TCP)"
                } else {
                    ""
                };
                report.add(name, Verdict::Fail, format!("{e}{fix}"));
            }
        }
    }
    match authenticated {
        Some(info) => {
            let who = info.caller.map(|c| c.subject).unwrap_or_default();
            report.add(
                "Authentication",
                Verdict::Ok,
                format!("as {who}, gateway {}", info.version),
            );
            let active: Vec<_> = info.compute_drivers.iter().filter(|d| d.active).collect();
            match active.first() {
                Some(d) if d.health == "ok" => report.add(
                    "Compute driver",
                    Verdict::Ok,
                    format!("{} {}", d.name, d.driver_version),
                ),
                Some(d) => report.add(
                    "Compute driver",
                    Verdict::Fail,
                    format!("{} is unhealthy: {}", d.name, d.health),
                ),
                None => report.add(
                    "Compute driver",
                    Verdict::Warn,
                    "the gateway reports no active compute driver: sandboxes cannot be created on it",
                ),
            }
        }
        None => report.add(
            "Authentication",
            Verdict::Fail,
            "not verified: no path reached the gateway with these credentials",
        ),
    }
}
