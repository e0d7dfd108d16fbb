//! `openshell gateway`: register, select, list and remove gateways, and log in to edge ones.
//!
//! Everything here works on the local registry (`crate::config`); nothing talks to a gateway
//! except the browser login, which only listens on loopback for the token, and `add`'s
//! probe of a gateway given no credentials: one TLS handshake, without a certificate, to
//! see whether it asks for one (a direct mTLS gateway) or not (edge: a browser sign-in).
//! A browser sign-in is waited for only with a terminal on stdin or with `--browser`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::CliError;
use crate::args::GlobalArgs;
use crate::config::bundle::{self, Installed};
use crate::config::endpoint::Scheme;
use crate::config::metadata::GatewayMetadata;
use crate::config::registry::{EDGE_TOKEN_FILE, MTLS_DIR};
use crate::config::resolve::{no_active_gateway, selected_name, unknown_gateway};
use crate::config::{
    AuthMode, Endpoint, Env, GatewayName, Layout, Registration, Source, login, registry,
};
use crate::output::{self, OutputFormat};
use openshell_transport::probe::ClientAuth;

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(subcommand)]
    pub command: GatewayCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum GatewayCommand {
    /// Register a gateway and make it the active one.
    Add(AddArgs),
    /// Remove a per-user gateway registration (the gateway itself keeps running).
    Remove {
        /// Gateway to remove (default: the active one).
        name: Option<String>,
    },
    /// Sign in to an edge gateway in the browser and store its token.
    Login {
        /// Gateway to sign in to (default: the active one).
        name: Option<String>,
        /// Wait for the browser sign-in even when stdin is not a terminal.
        #[arg(long)]
        browser: bool,
    },
    /// Delete the stored token of an edge gateway.
    Logout {
        /// Gateway to sign out of (default: the active one).
        name: Option<String>,
    },
    /// Set the active gateway (without NAME: list the gateways to choose from).
    Select {
        /// Gateway to make active.
        name: Option<String>,
    },
    /// List registered gateways (user and system).
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// What the gateway reports about itself: version, health, compute drivers, listeners.
    Info {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print the gateway this command line resolves to, as JSON (for debugging).
    #[command(hide = true)]
    Resolve,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Gateway URL: https://HOST[:PORT] or http://HOST[:PORT]; no scheme means https, no
    /// port means 17670.
    pub endpoint: String,
    /// Registration name (default: `openshell` for loopback hosts, else the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// The gateway runs on this machine or behind a port forward (not remote); an https
    /// gateway added with --local uses mTLS.
    #[arg(long)]
    pub local: bool,
    /// PEM file with the CA certificate, the client certificate and its private key, to
    /// install as this gateway's mTLS credentials.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// How to authenticate (default: plaintext for http, mtls when a bundle is present,
    /// else edge browser login).
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Replace mTLS certificates that are already installed and still valid.
    #[arg(long)]
    pub force: bool,
    /// Wait for an edge gateway's browser sign-in even when stdin is not a terminal (a
    /// script that completes it, a browser elsewhere). Without it and without a terminal,
    /// a gateway that needs a sign-in is an error at once.
    #[arg(long)]
    pub browser: bool,
}

pub async fn run(args: GatewayArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let env = Env::process();
    let layout = Layout::from_env(env);
    match args.command {
        GatewayCommand::Add(add_args) => add(add_args, &layout, env).await,
        GatewayCommand::Remove { name } => remove(name, global, &layout, env),
        GatewayCommand::Login { name, browser } => {
            login_cmd(name, browser, global, &layout, env).await
        }
        GatewayCommand::Logout { name } => logout(name, global, &layout, env),
        GatewayCommand::Select { name } => select(name, global, &layout, env),
        GatewayCommand::List { output } => list(output, global, &layout, env),
        GatewayCommand::Info { output } => super::gateway_info::run(output, global).await,
        GatewayCommand::Resolve => resolve_cmd(global),
    }
}

/// NAME argument, else `-g`, `OPENSHELL_GATEWAY`, the active gateway.
fn target_name(
    arg: Option<String>,
    global: &GlobalArgs,
    layout: &Layout,
    env: &Env,
) -> Result<GatewayName, CliError> {
    match arg {
        Some(n) => GatewayName::parse(&n),
        None => {
            selected_name(layout, env, global.gateway.as_deref())?.ok_or_else(no_active_gateway)
        }
    }
}

fn lookup_known(layout: &Layout, name: &GatewayName) -> Result<Registration, CliError> {
    layout.lookup(name)?.ok_or_else(|| unknown_gateway(name))
}

async fn add(a: AddArgs, layout: &Layout, env: &Env) -> Result<ExitCode, CliError> {
    let endpoint = Endpoint::parse_input(&a.endpoint)?;
    let name = match &a.name {
        Some(n) => GatewayName::parse(n)?,
        None => GatewayName::default_for_host(&endpoint.host, endpoint.is_loopback())?,
    };
    if layout.user_entry_exists(&name)? {
        return Err(CliError::msg(format!(
            "Gateway '{name}' already exists.\nRemove it first with: openshell gateway remove {name}\nOr choose a different name with: --name <name>"
        )));
    }
    let user_dir = layout.user_gateway_dir(&name)?;
    let mtls_dir = user_dir.join(MTLS_DIR);
    let installed = bundle::inspect(&mtls_dir);
    let auth = choose_auth(&a, &endpoint, &installed)?;
    // Read the bundle before writing anything, so a bad file leaves no trace.
    let new_bundle = a.bundle.as_deref().map(bundle::read_bundle).transpose()?;
    // Edge was only the default (no --auth, no credentials): ask the gateway first.
    let mut guessed = false;
    if auth == AuthMode::Edge && a.auth.is_none() {
        match probe_auth(&endpoint).await {
            ClientAuth::Requested => {
                return Err(missing_bundle(
                    &name,
                    &endpoint,
                    &mtls_dir,
                    Some("asks for a client certificate, so it is a direct mTLS gateway"),
                ));
            }
            ClientAuth::NotRequested => {}
            ClientAuth::Unknown(why) => {
                guessed = true;
                eprintln!(
                    "⚠ Cannot tell whether {endpoint} wants a client certificate ({why}); assuming edge authentication (a browser sign-in)."
                );
            }
        }
    }

    let mut installed_fresh = false;
    if auth == AuthMode::Mtls {
        match &new_bundle {
            Some(b) => {
                bundle::install(b, &mtls_dir, a.force)?;
                installed_fresh = installed == Installed::Absent;
            }
            None => match &installed {
                Installed::Complete { not_after } => {
                    if let Some(t) = not_after
                        && *t <= time::OffsetDateTime::now_utc()
                    {
                        eprintln!(
                            "⚠ The client certificate in {} expired on {}.",
                            mtls_dir.display(),
                            openshell_pki::format_time(*t)
                        );
                    }
                }
                Installed::Partial(missing) => {
                    return Err(CliError::hint(
                        format!(
                            "mTLS certificates for gateway '{name}' are incomplete: {} missing from {}",
                            missing.join(", "),
                            mtls_dir.display()
                        ),
                        "Place ca.crt, tls.crt and tls.key there, or pass the whole bundle with --bundle FILE",
                    ));
                }
                Installed::Absent => {
                    return Err(missing_bundle(&name, &endpoint, &mtls_dir, None));
                }
            },
        }
    } else if auth == AuthMode::Plaintext && installed != Installed::Absent {
        eprintln!("⚠ mTLS certificates found for gateway '{name}'. Did you mean to use https?");
    }

    let is_remote = !(a.local || endpoint.is_loopback());
    let meta = GatewayMetadata::new(name.as_str(), &endpoint, is_remote, auth);
    let previous_active = layout.user_active_raw().unwrap_or(None);
    // Sign in before anything is written: an interrupted or failed login leaves no trace.
    // The config directory is checked first so an unwritable one fails before the browser.
    let token = if auth == AuthMode::Edge {
        registry::ensure_user_root(layout.user_root()?)?;
        let mtls_fix = guessed.then(|| {
            format!(
                "If it is a direct mTLS gateway, install a client certificate first: openshell pki issue <user> --gateway {name}"
            )
        });
        login::ensure_attended(a.browser, &endpoint, mtls_fix.as_deref())?;
        Some(login::browser_login(&endpoint, env).await?)
    } else {
        None
    };
    let registered = token
        .as_deref()
        .map_or(Ok(()), |t| {
            login::store_token(&user_dir.join(EDGE_TOKEN_FILE), t)
        })
        .and_then(|()| layout.write_metadata(&name, &meta))
        .and_then(|()| layout.set_active(&name));
    if let Err(err) = registered {
        // Leave the registry as it was: no half-registered gateway, the old active one back.
        let _ = layout.remove_user_entry(&name);
        if installed_fresh {
            let _ = std::fs::remove_dir_all(&mtls_dir);
            let _ = std::fs::remove_dir(&user_dir);
        }
        let _ = layout.restore_user_active(previous_active.as_deref());
        return Err(err);
    }

    let reg = Registration {
        name: name.clone(),
        source: Source::User,
        metadata: meta,
        endpoint: endpoint.clone(),
        auth,
    };
    eprintln!("✓ Gateway '{name}' added and set as active");
    eprintln!("  Endpoint: {endpoint}");
    eprintln!("  Type: {}", reg.kind());
    if auth == AuthMode::Mtls {
        eprintln!("✓ TLS certificates present");
    } else {
        eprintln!("  Auth: {auth}");
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `gateway add` spends finding out whether a gateway wants a client certificate.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the gateway asks of a client without a certificate (one TLS handshake, no
/// credentials sent).
async fn probe_auth(endpoint: &Endpoint) -> ClientAuth {
    match openshell_transport::Endpoint::parse(&endpoint.to_string()) {
        Ok(ep) => openshell_transport::probe::client_auth(&ep, &[], PROBE_LIMIT).await,
        Err(e) => ClientAuth::Unknown(e.to_string()),
    }
}

/// No client bundle for an mTLS gateway: which files, where, and the commands that make
/// them. `why`: what showed the gateway wants one, when it was not the user's choice.
fn missing_bundle(
    name: &GatewayName,
    endpoint: &Endpoint,
    mtls_dir: &std::path::Path,
    why: Option<&str>,
) -> CliError {
    let found = match why {
        Some(why) => format!("Gateway '{name}' at {endpoint} {why}, and "),
        None => String::new(),
    };
    CliError::hint(
        format!(
            "{found}mTLS certificates for gateway '{name}' were not found.
No client bundle (ca.crt, tls.crt, tls.key) in {}",
            mtls_dir.display()
        ),
        format!(
            "Issue one from the gateway's CA (on the machine that holds it): openshell pki issue <user> --gateway {name}
Or import a bundle: openshell gateway add {endpoint} --name {name} --bundle FILE"
        ),
    )
}

/// The auth mode for `gateway add`, refusing combinations that cannot work.
fn choose_auth(
    a: &AddArgs,
    endpoint: &Endpoint,
    installed: &Installed,
) -> Result<AuthMode, CliError> {
    let requested = a.auth;
    let bundle_given = a.bundle.is_some();
    match endpoint.scheme {
        Scheme::Http => {
            if let Some(mode) = requested.filter(|m| *m != AuthMode::Plaintext) {
                return Err(CliError::hint(
                    format!(
                        "--auth {mode} needs an https:// endpoint; http:// gateways are plaintext"
                    ),
                    format!(
                        "Use: openshell gateway add https://{}:{}",
                        endpoint.url_host(),
                        endpoint.port
                    ),
                ));
            }
            if bundle_given {
                return Err(CliError::msg(
                    "--bundle needs an https:// endpoint; http:// gateways use no certificates",
                ));
            }
            Ok(AuthMode::Plaintext)
        }
        Scheme::Https => match requested {
            Some(AuthMode::Plaintext) => Err(CliError::hint(
                "--auth plaintext needs an http:// endpoint",
                format!(
                    "Use: openshell gateway add http://{}:{}",
                    endpoint.url_host(),
                    endpoint.port
                ),
            )),
            Some(AuthMode::Edge) if bundle_given => Err(CliError::msg(
                "--bundle installs mTLS credentials and cannot be combined with --auth edge",
            )),
            Some(AuthMode::Edge) if a.local => Err(CliError::msg(
                "--local https gateways use mTLS and cannot be combined with --auth edge",
            )),
            Some(mode) => Ok(mode),
            None if bundle_given || a.local || *installed != Installed::Absent => {
                Ok(AuthMode::Mtls)
            }
            None => Ok(AuthMode::Edge),
        },
    }
}

fn remove(
    name: Option<String>,
    global: &GlobalArgs,
    layout: &Layout,
    env: &Env,
) -> Result<ExitCode, CliError> {
    let name = target_name(name, global, layout, env)?;
    if layout.user_entry_exists(&name)? {
        layout.remove_user_entry(&name)?;
        layout.clear_active_if(&name)?;
        eprintln!("✓ Gateway registration '{name}' removed.");
        if let Ok(Some(reg)) = layout.lookup(&name)
            && reg.source == Source::System
        {
            eprintln!("  The system registration '{name}' is visible again.");
        }
        return Ok(ExitCode::SUCCESS);
    }
    match layout.lookup(&name) {
        Ok(None) => Err(CliError::hint(
            format!("Unknown gateway '{name}': there is no registration to remove."),
            "List registered gateways with: openshell gateway list",
        )),
        // Only the system layer has it (readable or not).
        Ok(Some(_)) | Err(_) => Err(CliError::msg(format!(
            "Gateway registration '{name}' is installed by the system and cannot be removed from user config.\nRegister a per-user gateway with the same name to override it, or select another gateway."
        ))),
    }
}

async fn login_cmd(
    name: Option<String>,
    browser: bool,
    global: &GlobalArgs,
    layout: &Layout,
    env: &Env,
) -> Result<ExitCode, CliError> {
    let name = target_name(name, global, layout, env)?;
    let reg = lookup_known(layout, &name)?;
    if reg.auth != AuthMode::Edge {
        return Err(CliError::msg(format!(
            "Gateway '{name}' does not use edge or OIDC authentication.\nOnly edge-authenticated and OIDC gateways support browser login."
        )));
    }
    login::ensure_attended(browser, &reg.endpoint, None)?;
    let token = login::browser_login(&reg.endpoint, env).await?;
    login::store_token(
        &layout.user_gateway_dir(&name)?.join(EDGE_TOKEN_FILE),
        &token,
    )?;
    eprintln!("✓ Authenticated to gateway '{name}'");
    Ok(ExitCode::SUCCESS)
}

fn logout(
    name: Option<String>,
    global: &GlobalArgs,
    layout: &Layout,
    env: &Env,
) -> Result<ExitCode, CliError> {
    let name = target_name(name, global, layout, env)?;
    let reg = lookup_known(layout, &name)?;
    if reg.auth != AuthMode::Edge {
        eprintln!(
            "Gateway '{name}' uses {} authentication — no stored credentials to clear.",
            reg.auth
        );
        return Ok(ExitCode::SUCCESS);
    }
    registry::remove_if_exists(&layout.user_gateway_dir(&name)?.join(EDGE_TOKEN_FILE))?;
    eprintln!("✓ Logged out of gateway '{name}'");
    Ok(ExitCode::SUCCESS)
}

fn select(
    name: Option<String>,
    global: &GlobalArgs,
    layout: &Layout,
    env: &Env,
) -> Result<ExitCode, CliError> {
    let name = match name {
        Some(n) => GatewayName::parse(&n)?,
        None => {
            let (regs, broken) = layout.list();
            let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
            if !interactive || regs.is_empty() {
                // `list` prints the warnings about unreadable entries.
                list(OutputFormat::Table, global, layout, env)?;
                if !regs.is_empty() {
                    eprintln!("Select a gateway with: openshell gateway select <name>");
                }
                return Ok(ExitCode::SUCCESS);
            }
            warn_broken(&broken);
            match choose(&regs)? {
                Some(n) => n,
                None => {
                    eprintln!("! Gateway selection cancelled");
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };
    if layout.lookup(&name)?.is_none() {
        return Err(CliError::hint(
            format!("No gateway metadata found for '{name}'."),
            "List available gateways with: openshell gateway list\nOr register one with: openshell gateway add <endpoint> --name <name>",
        ));
    }
    layout.set_active(&name)?;
    eprintln!("✓ Active gateway set to '{name}'");
    if let Some(from_env) = &env.gateway
        && from_env != name.as_str()
    {
        eprintln!("⚠ OPENSHELL_GATEWAY={from_env} is set and will override this selection.");
        eprintln!("  Unset it or run: export OPENSHELL_GATEWAY={name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A numbered prompt on the terminal; `None` when the user cancels.
fn choose(regs: &[Registration]) -> Result<Option<GatewayName>, CliError> {
    let rows: Vec<Vec<String>> = regs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                (i + 1).to_string(),
                r.name.to_string(),
                r.endpoint.to_string(),
                r.kind().to_string(),
                r.auth.to_string(),
            ]
        })
        .collect();
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "{}",
        output::table(&["#", "NAME", "ENDPOINT", "TYPE", "AUTH"], &rows)
    );
    let _ = write!(
        err,
        "Select a gateway [1-{}] (Enter to cancel): ",
        regs.len()
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let choice = line.trim();
    if choice.is_empty() {
        return Ok(None);
    }
    if let Ok(i) = choice.parse::<usize>()
        && (1..=regs.len()).contains(&i)
    {
        return Ok(Some(regs[i - 1].name.clone()));
    }
    if let Some(r) = regs.iter().find(|r| r.name.as_str() == choice) {
        return Ok(Some(r.name.clone()));
    }
    Err(CliError::msg(format!(
        "'{choice}' is not one of the listed gateways"
    )))
}

/// One `gateway list` entry as JSON/YAML.
#[derive(Debug, Serialize)]
struct ListItem {
    name: String,
    endpoint: String,
    #[serde(rename = "type")]
    kind: &'static str,
    source: &'static str,
    auth: &'static str,
    active: bool,
    is_remote: bool,
    transport_last_used: Option<String>,
}

fn list(
    format: OutputFormat,
    global: &GlobalArgs,
    layout: &Layout,
    env: &Env,
) -> Result<ExitCode, CliError> {
    let (regs, broken) = layout.list();
    warn_broken(&broken);
    // As upstream: -g / OPENSHELL_GATEWAY mark the active row, else the active files do. An
    // invalid -g name simply marks nothing.
    let active = selected_name(layout, env, global.gateway.as_deref()).unwrap_or(None);
    let items: Vec<ListItem> = regs
        .iter()
        .map(|r| ListItem {
            name: r.name.to_string(),
            endpoint: r.endpoint.to_string(),
            kind: r.kind(),
            source: r.source.as_str(),
            auth: r.auth.as_str(),
            active: active.as_ref() == Some(&r.name),
            is_remote: r.metadata.is_remote,
            transport_last_used: r.metadata.transport_last_used.clone(),
        })
        .collect();
    if items.is_empty() && format == OutputFormat::Table {
        output::print_stdout(
            "No gateways found.\nRegister one with: openshell gateway add <endpoint>\n",
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    output::emit(format, &items, |items| render_table(items))?;
    Ok(ExitCode::SUCCESS)
}

fn render_table(items: &[ListItem]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                format!("{} {}", if i.active { "*" } else { " " }, i.name),
                i.endpoint.clone(),
                i.kind.to_string(),
                i.source.to_string(),
                i.auth.to_string(),
                i.transport_last_used.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let text = output::table(
        &["  NAME", "ENDPOINT", "TYPE", "SOURCE", "AUTH", "TRANSPORT"],
        &rows,
    );
    if !output::color_enabled_stdout() {
        return text;
    }
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let active = i > 0 && items.get(i - 1).is_some_and(|it| it.active);
            if active {
                format!("\x1b[32m{line}\x1b[0m\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

fn warn_broken(broken: &[CliError]) {
    for err in broken {
        eprintln!("⚠ {err}");
        if let Some(hint) = err.hint_text() {
            for line in hint.lines() {
                eprintln!("  {line}");
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct ResolvedView {
    name: String,
    endpoint: String,
    auth: AuthMode,
    source: Source,
    mtls_dir: PathBuf,
    edge_token_path: PathBuf,
    user_dir: PathBuf,
}

fn resolve_cmd(global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let r = crate::config::resolve(global)?;
    let view = ResolvedView {
        name: r.name,
        endpoint: r.endpoint,
        auth: r.auth,
        source: r.source,
        mtls_dir: r.mtls_dir,
        edge_token_path: r.edge_token_path,
        user_dir: r.user_dir,
    };
    output::emit(OutputFormat::Json, &view, |_| String::new())?;
    Ok(ExitCode::SUCCESS)
}
