//! `openshell pki`: the gateway's certificate authority from the command line.
//!
//! Everything here is argument handling and presentation; the work is done by
//! `openshell_pki`. Success lines go to stderr and start with `✓ `; data (tables, JSON,
//! YAML, serials) goes to stdout. Private keys are written to files, never printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use openshell_pki::{
    Ca, CertInfo, ClientBundle, DEFAULT_CA_OVERLAP, DEFAULT_CA_VALIDITY, DEFAULT_CLIENT_VALIDITY,
    DEFAULT_SERVER_VALIDITY, Duration, IndexEntry, InitOptions, KeyType, PkiDir, San, bundle,
    format_time,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::CliError;
use crate::args::GlobalArgs;
use crate::config::{Env, GatewayName, Layout, registry};
use crate::output::{self, OutputFormat};

/// Certificate authority: issue, list, inspect, revoke and rotate certificates.
#[derive(Debug, Args)]
pub struct PkiArgs {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create a CA, the gateway's server certificate and an empty CRL.
    Init(InitArgs),
    /// Issue a client certificate for a user and write it where the CLI will use it.
    ///
    /// Destination (exactly one): the global --gateway NAME installs ca.crt, tls.crt and
    /// tls.key into that gateway's mtls/ directory; --out DIR writes the same three files
    /// into DIR; --bundle FILE writes one 0600 PEM file for `openshell gateway add --bundle`.
    Issue(IssueArgs),
    /// List issued certificates and their status.
    List(ListArgs),
    /// Show a certificate: subject, SANs, usages, validity, fingerprint, trust.
    Inspect(InspectArgs),
    /// Revoke a certificate by serial, or every valid certificate of a user.
    Revoke(RevokeArgs),
    /// Re-issue the gateway's server certificate.
    RotateServer(RotateServerArgs),
    /// Replace the CA; the old one stays trusted for client certificates during an overlap.
    RotateCa(RotateCaArgs),
}

#[derive(Debug, Args)]
struct DirArg {
    /// PKI directory [default: $XDG_STATE_HOME/openshell/gateway/pki].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl DirArg {
    fn pki_dir(&self) -> PkiDir {
        match &self.dir {
            Some(d) => PkiDir::new(d.clone()),
            None => PkiDir::default_location(),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyTypeArg {
    /// ECDSA P-256 (default; accepted everywhere).
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Extra name or IP address for the server certificate (repeatable). localhost,
    /// 127.0.0.1, ::1, host.docker.internal, host.containers.internal and the host name are
    /// always included.
    #[arg(long = "san", value_name = "NAME_OR_IP", value_parser = parse_san)]
    sans: Vec<San>,
    /// Key algorithm for every certificate of this PKI.
    #[arg(long, value_enum, default_value = "ecdsa-p256")]
    key_type: KeyTypeArg,
    /// CA lifetime (e.g. 10y, 5y).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true, default_value_t = DEFAULT_CA_VALIDITY)]
    ca_validity: Duration,
    /// Server certificate lifetime (e.g. 1y, 90d).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true, default_value_t = DEFAULT_SERVER_VALIDITY)]
    server_validity: Duration,
    /// Replace an existing PKI (every certificate it issued stops working).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// The user: becomes the certificate's common name.
    user: String,
    /// A role, recorded as one OU (repeatable).
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Certificate lifetime (e.g. 90d, 12h, 1d12h).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true, default_value_t = DEFAULT_CLIENT_VALIDITY)]
    validity: Duration,
    #[command(flatten)]
    dir: DirArg,
    /// Write ca.crt, tls.crt and tls.key into this directory.
    #[arg(long, value_name = "DIR", conflicts_with = "bundle")]
    out: Option<PathBuf>,
    /// Write one PEM file (CA certificate, client certificate, key; mode 0600).
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Replace a credential that is still valid at the destination.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// A certificate or bundle file (PEM or DER), or a directory holding tls.crt or ca.crt.
    path: PathBuf,
    /// PKI to check the certificate against (chain and revocation).
    #[command(flatten)]
    dir: DirArg,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// A serial (hex, as shown by `openshell pki list`) or a user name.
    serial_or_user: String,
    /// Why (recorded in the index; key-compromise, superseded, affiliation-changed,
    /// cessation-of-operation and privilege-withdrawn also set the CRL reason code).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    #[command(flatten)]
    dir: DirArg,
}

#[derive(Debug, Args)]
struct RotateServerArgs {
    /// Extra name or IP address, added to the ones already recorded (repeatable).
    #[arg(long = "san", value_name = "NAME_OR_IP", value_parser = parse_san)]
    sans: Vec<San>,
    /// Server certificate lifetime.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true, default_value_t = DEFAULT_SERVER_VALIDITY)]
    validity: Duration,
    #[command(flatten)]
    dir: DirArg,
}

#[derive(Debug, Args)]
struct RotateCaArgs {
    /// How long the old CA stays trusted for client certificates it issued.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true, default_value_t = DEFAULT_CA_OVERLAP)]
    overlap: Duration,
    #[command(flatten)]
    dir: DirArg,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    Duration::parse(text).map_err(|e| e.to_string())
}

fn parse_san(text: &str) -> Result<San, String> {
    San::parse(text).map_err(|e| e.to_string())
}

pub async fn run(args: PkiArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    match args.command {
        PkiCommand::Init(a) => init(a),
        PkiCommand::Issue(a) => issue(a, global),
        PkiCommand::List(a) => list(a),
        PkiCommand::Inspect(a) => inspect(a),
        PkiCommand::Revoke(a) => revoke(a),
        PkiCommand::RotateServer(a) => rotate_server(a),
        PkiCommand::RotateCa(a) => rotate_ca(a),
    }?;
    Ok(ExitCode::SUCCESS)
}

fn load(dir: &PkiDir) -> Result<Ca, CliError> {
    Ok(Ca::load(dir)?)
}

fn init(a: InitArgs) -> Result<(), CliError> {
    let dir = a.dir.pki_dir();
    let key_type = match a.key_type {
        KeyTypeArg::EcdsaP256 => KeyType::EcdsaP256,
        KeyTypeArg::Ed25519 => KeyType::Ed25519,
    };
    let ca = openshell_pki::init(
        &dir,
        InitOptions {
            sans: a.sans,
            key_type,
            ca_validity: a.ca_validity,
            server_validity: a.server_validity,
            force: a.force,
        },
    )?;
    let server = ca
        .index()
        .certificates
        .iter()
        .rev()
        .find(|e| e.kind == openshell_pki::CertKind::Server)
        .cloned();
    eprintln!(
        "✓ Created a PKI in {} ({key_type} keys)",
        dir.path().display()
    );
    eprintln!(
        "  CA: serial {}, expires {}",
        ca.serial(),
        format_time(ca.not_after())
    );
    if let Some(s) = server {
        let sans: Vec<String> = s.sans.iter().map(ToString::to_string).collect();
        eprintln!(
            "  Server certificate: expires {}, names {}",
            format_time(s.not_after),
            sans.join(", ")
        );
    }
    eprintln!("  Next: openshell pki issue <user> --bundle <file> (or --gateway <name>)");
    Ok(())
}

/// Where `issue` writes the credential.
enum Destination {
    /// A gateway's mtls/ directory (replaced whole).
    Gateway { name: GatewayName, mtls: PathBuf },
    /// ca.crt, tls.crt, tls.key inside a user-chosen directory (other files left alone).
    Out(PathBuf),
    /// One PEM file.
    Bundle(PathBuf),
}

impl Destination {
    fn path(&self) -> &Path {
        match self {
            Destination::Gateway { mtls, .. } => mtls,
            Destination::Out(p) | Destination::Bundle(p) => p,
        }
    }
}

fn destination(a: &IssueArgs, global: &GlobalArgs) -> Result<Destination, CliError> {
    let chosen = [
        global.gateway.is_some(),
        a.out.is_some(),
        a.bundle.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if chosen != 1 {
        return Err(CliError::hint(
            if chosen == 0 {
                "choose where to write the credential".to_string()
            } else {
                "--gateway, --out and --bundle are mutually exclusive".to_string()
            },
            "Pass exactly one of: --gateway NAME, --out DIR, --bundle FILE",
        ));
    }
    if let Some(name) = &global.gateway {
        let name = GatewayName::parse(name)?;
        let layout = Layout::from_env(Env::process());
        let mtls = layout.user_gateway_dir(&name)?.join(registry::MTLS_DIR);
        return Ok(Destination::Gateway { name, mtls });
    }
    if let Some(out) = &a.out {
        if out.exists() && !out.is_dir() {
            return Err(CliError::msg(format!(
                "--out {} is not a directory; pass a directory (or use --bundle FILE)",
                out.display()
            )));
        }
        return Ok(Destination::Out(out.clone()));
    }
    let file = a.bundle.clone().unwrap_or_default();
    if file.is_dir() {
        return Err(CliError::msg(format!(
            "--bundle {} is a directory; pass a file path (or use --out DIR)",
            file.display()
        )));
    }
    Ok(Destination::Bundle(file))
}

fn issue(a: IssueArgs, global: &GlobalArgs) -> Result<(), CliError> {
    let dest = destination(&a, global)?;
    let dir = a.dir.pki_dir();
    let mut ca = load(&dir)?;
    let now = OffsetDateTime::now_utc();
    bundle::check_replace(dest.path(), a.force, now)?;
    let issued = ca.issue_client(&a.user, &a.roles, a.validity)?;
    let credential = ClientBundle {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: issued.cert_pem.clone(),
        key_pem: issued.key_pem.clone(),
    };
    let written = match &dest {
        Destination::Gateway { mtls, .. } => bundle::install_bundle(&credential, mtls),
        Destination::Out(out) => write_out_dir(&credential, out),
        Destination::Bundle(file) => bundle::write_bundle(&credential, file),
    };
    if let Err(e) = written {
        // Nobody holds the key: revoke the certificate so the index does not list a usable
        // credential that does not exist.
        let serial = issued.serial.to_string();
        let hint = match ca.revoke(
            &serial,
            Some("cessation-of-operation: credential not saved"),
        ) {
            Ok(_) => format!(
                "Certificate {serial} was revoked (nobody holds its key); fix the destination and retry"
            ),
            Err(r) => format!(
                "Certificate {serial} was not saved and could not be revoked ({r}); run: openshell pki revoke {serial}"
            ),
        };
        return Err(CliError::hint(e, hint));
    }
    let roles = if a.roles.is_empty() {
        String::new()
    } else {
        format!(", roles {}", a.roles.join(","))
    };
    eprintln!(
        "✓ Issued a certificate for '{}' (serial {}{roles}, expires {})",
        a.user,
        issued.serial,
        format_time(issued.entry.not_after)
    );
    match &dest {
        Destination::Gateway { name, mtls } => {
            eprintln!("  Installed for gateway '{name}' in {}", mtls.display());
            let layout = Layout::from_env(Env::process());
            if !layout.user_entry_exists(name).unwrap_or(true) {
                eprintln!(
                    "  Register the gateway with: openshell gateway add https://<host>:17670 --name {name}"
                );
            }
        }
        Destination::Out(out) => eprintln!(
            "  Wrote ca.crt, tls.crt and tls.key (0600) in {}",
            out.display()
        ),
        Destination::Bundle(file) => {
            eprintln!("  Wrote bundle {} (0600)", file.display());
            eprintln!(
                "  Import it with: openshell gateway add https://<host>:17670 --name <name> --bundle {}",
                file.display()
            );
        }
    }
    output::print_stdout(&format!("{}\n", issued.serial))
}

/// Writes the three credential files into `out` together (all or none replaced).
fn write_out_dir(credential: &ClientBundle, out: &Path) -> Result<(), openshell_pki::PkiError> {
    let mut files = openshell_pki::fs::FileSet::new();
    files
        .public(out.join(bundle::CA_FILE), credential.ca_pem.clone())
        .public(out.join(bundle::CERT_FILE), credential.cert_pem.clone())
        .secret(out.join(bundle::KEY_FILE), credential.key_pem.clone());
    files.commit()?;
    Ok(())
}

/// One row of `pki list`.
#[derive(Debug, Serialize)]
struct ListRow {
    serial: String,
    subject: String,
    roles: Vec<String>,
    kind: &'static str,
    issuer: String,
    not_before: String,
    not_after: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl ListRow {
    fn new(e: &IndexEntry, now: OffsetDateTime) -> ListRow {
        ListRow {
            serial: e.serial.to_string(),
            subject: e.subject_cn.clone(),
            roles: e.roles.clone(),
            kind: e.kind.as_str(),
            issuer: e.issuer.to_string(),
            not_before: format_time(e.not_before),
            not_after: format_time(e.not_after),
            status: e.status_at(now).as_str(),
            revoked_at: e.revoked_at.map(format_time),
            reason: e.reason.clone(),
        }
    }
}

fn list(a: ListArgs) -> Result<(), CliError> {
    let dir = a.dir.pki_dir();
    let index = dir.index()?;
    let now = OffsetDateTime::now_utc();
    let rows: Vec<ListRow> = index
        .certificates
        .iter()
        .map(|e| ListRow::new(e, now))
        .collect();
    output::emit(a.output, &rows, |rows| {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.serial.clone(),
                    r.subject.clone(),
                    if r.roles.is_empty() {
                        "-".into()
                    } else {
                        r.roles.join(",")
                    },
                    r.kind.into(),
                    r.not_after.clone(),
                    r.status.into(),
                ]
            })
            .collect();
        output::table(
            &["SERIAL", "SUBJECT", "ROLES", "KIND", "NOT AFTER", "STATUS"],
            &cells,
        )
    })
}

fn inspect(a: InspectArgs) -> Result<(), CliError> {
    let dir = a.dir.pki_dir();
    let info = openshell_pki::inspect_path(&a.path, Some(&dir))?;
    output::emit(a.output, &info, inspect_table)
}

fn inspect_table(i: &CertInfo) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut rows: Vec<(&str, String)> = vec![
        (
            "File",
            i.file
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string()),
        ),
        ("Subject", i.subject.clone()),
        ("Issuer", i.issuer.clone()),
        ("Serial", i.serial.to_string()),
        ("CA", yes_no(i.is_ca).into()),
        (
            "SANs",
            if i.sans.is_empty() {
                "-".into()
            } else {
                i.sans.join(", ")
            },
        ),
        (
            "Usages",
            if i.ekus.is_empty() {
                "-".into()
            } else {
                i.ekus.join(", ")
            },
        ),
        ("Key", i.key_type.clone()),
        ("Not before", i.not_before.clone()),
        ("Not after", i.not_after.clone()),
        ("Status", i.status.as_str().into()),
        ("SHA-256", i.sha256_fingerprint.clone()),
    ];
    if i.chain_len > 1 {
        rows.push(("Chain", format!("{} certificates", i.chain_len)));
    }
    match &i.checked_against {
        Some(dir) => {
            rows.push(("Issued by CA", yes_no(i.chains_to_ca).into()));
            rows.push(("Revoked", yes_no(i.revoked).into()));
            rows.push(("Checked against", dir.display().to_string()));
        }
        None => rows.push((
            "Checked against",
            "no PKI found (pass --dir to check chain and revocation)".into(),
        )),
    }
    if let Some(m) = i.key_matches {
        rows.push(("Key matches", yes_no(m).into()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn revoke(a: RevokeArgs) -> Result<(), CliError> {
    let dir = a.dir.pki_dir();
    let mut ca = load(&dir)?;
    let revoked = ca.revoke(&a.serial_or_user, a.reason.as_deref())?;
    let mut out = String::new();
    for e in &revoked {
        eprintln!(
            "✓ Revoked {} certificate {} of '{}'",
            e.kind.as_str(),
            e.serial,
            e.subject_cn
        );
        out.push_str(&format!("{}\n", e.serial));
    }
    eprintln!(
        "  {} updated; a running gateway picks it up without a restart",
        dir.crl_path().display()
    );
    output::print_stdout(&out)
}

fn rotate_server(a: RotateServerArgs) -> Result<(), CliError> {
    let dir = a.dir.pki_dir();
    let mut ca = load(&dir)?;
    let issued = ca.issue_server(&a.sans, a.validity)?;
    let sans: Vec<String> = issued.entry.sans.iter().map(ToString::to_string).collect();
    eprintln!(
        "✓ Re-issued the gateway certificate (serial {}, expires {})",
        issued.serial,
        format_time(issued.entry.not_after)
    );
    eprintln!("  Names: {}", sans.join(", "));
    eprintln!(
        "  Written to {}; a running gateway picks it up without a restart",
        dir.server_cert_path().display()
    );
    output::print_stdout(&format!("{}\n", issued.serial))
}

fn rotate_ca(a: RotateCaArgs) -> Result<(), CliError> {
    let dir = a.dir.pki_dir();
    let mut ca = load(&dir)?;
    let rotated = ca.rotate_ca(a.overlap)?;
    let now = OffsetDateTime::now_utc();
    let users: Vec<String> = ca
        .index()
        .certificates
        .iter()
        .filter(|e| e.issuer == rotated.old_serial && e.is_usable_at(now))
        .filter(|e| e.kind == openshell_pki::CertKind::User)
        .map(|e| e.subject_cn.clone())
        .collect();
    eprintln!(
        "✓ New CA {} (expires {}); the gateway certificate was re-issued by it",
        rotated.new_serial,
        format_time(ca.not_after())
    );
    eprintln!(
        "  The old CA {} stays trusted for client certificates until {}",
        rotated.old_serial,
        format_time(rotated.old_trusted_until)
    );
    if !users.is_empty() {
        let mut users = users;
        users.sort();
        users.dedup();
        eprintln!(
            "  Re-issue before then for: {} (openshell pki issue <user> ...)",
            users.join(", ")
        );
    }
    output::print_stdout(&format!("{}\n", rotated.new_serial))
}
