//! Which gateway a command talks to.
//!
//! Order (first match wins, as upstream):
//!
//! ```text
//! --gateway-endpoint URL   registration with that endpoint (-g/env name, then active, then any)
//!                          else the URL itself (Source::Endpoint)
//! -g NAME                  \
//! OPENSHELL_GATEWAY         > name -> user metadata.json, else system metadata.json
//! user active_gateway      /
//! system active_gateway   /
//! ```

use super::endpoint::{Endpoint, Scheme, same_endpoint};
use super::env::Env;
use super::name::GatewayName;
use super::registry::{EDGE_TOKEN_FILE, Layout, MTLS_DIR, Registration};
use super::{AuthMode, ResolvedGateway, Source};
use crate::CliError;

/// The name a command selected explicitly (`-g`, then `OPENSHELL_GATEWAY`), unvalidated.
pub fn requested_name<'a>(flag: Option<&'a str>, env: &'a Env) -> Option<&'a str> {
    flag.map(str::trim)
        .filter(|s| !s.is_empty())
        .or(env.gateway.as_deref())
}

/// The name a command talks to when no `--gateway-endpoint` is given: `-g`, env, active files.
/// `Ok(None)` when nothing selects one.
pub fn selected_name(
    layout: &Layout,
    env: &Env,
    flag: Option<&str>,
) -> Result<Option<GatewayName>, CliError> {
    match requested_name(flag, env) {
        Some(name) => GatewayName::parse(name).map(Some),
        None => Ok(layout.active()),
    }
}

/// Resolves from explicit inputs; see the module docs for the order.
pub fn resolve_in(
    layout: &Layout,
    env: &Env,
    gateway_flag: Option<&str>,
    endpoint_flag: Option<&str>,
) -> Result<ResolvedGateway, CliError> {
    if let Some(url) = endpoint_flag {
        return resolve_endpoint(layout, env, gateway_flag, url);
    }
    let name = selected_name(layout, env, gateway_flag)?.ok_or_else(no_active_gateway)?;
    let reg = layout
        .lookup(&name)?
        .ok_or_else(|| unknown_gateway(&name))?;
    from_registration(layout, &reg)
}

/// `Unknown gateway '<n>'.` with upstream's two hint lines.
pub fn unknown_gateway(name: impl std::fmt::Display) -> CliError {
    CliError::msg(format!(
        "Unknown gateway '{name}'.\nRegister it first: openshell gateway add <endpoint> --name {name}\nOr list available gateways: openshell gateway select"
    ))
}

/// `No active gateway.` with upstream's two hint lines.
pub fn no_active_gateway() -> CliError {
    CliError::msg(
        "No active gateway.\nSet one with: openshell gateway select <name>\nOr register one with: openshell gateway add <endpoint>",
    )
}

/// The transport's view of a registration.
pub fn from_registration(layout: &Layout, reg: &Registration) -> Result<ResolvedGateway, CliError> {
    let user_dir = layout.user_gateway_dir(&reg.name)?;
    Ok(ResolvedGateway {
        name: reg.name.to_string(),
        endpoint: reg.endpoint.to_string(),
        auth: reg.auth,
        source: reg.source,
        mtls_dir: user_dir.join(MTLS_DIR),
        edge_token_path: user_dir.join(EDGE_TOKEN_FILE),
        user_dir,
    })
}

fn resolve_endpoint(
    layout: &Layout,
    env: &Env,
    gateway_flag: Option<&str>,
    url: &str,
) -> Result<ResolvedGateway, CliError> {
    let endpoint = Endpoint::parse_input(url)?;
    let (all, _broken) = layout.list();
    let matching: Vec<&Registration> = all
        .iter()
        .filter(|r| same_endpoint(url, &r.metadata.gateway_endpoint))
        .collect();
    let requested = requested_name(gateway_flag, env).and_then(|n| GatewayName::parse(n).ok());
    let active = layout.active();
    let pick = |want: &Option<GatewayName>| {
        want.as_ref()
            .and_then(|w| matching.iter().find(|r| &r.name == w))
    };
    if let Some(reg) = pick(&requested)
        .or_else(|| pick(&active))
        .or_else(|| matching.first())
    {
        let mut resolved = from_registration(layout, reg)?;
        // The URL given wins over a registered one that differs only in spelling.
        resolved.endpoint = endpoint.to_string();
        return Ok(resolved);
    }
    // No registration: credentials are looked up under the -g/env name, else the default
    // name `gateway add` would have used for this host.
    let cred_name = match requested {
        Some(n) => n,
        None => GatewayName::default_for_host(&endpoint.host, endpoint.is_loopback())?,
    };
    let user_dir = layout.user_gateway_dir(&cred_name)?;
    let mtls_dir = user_dir.join(MTLS_DIR);
    let edge_token_path = user_dir.join(EDGE_TOKEN_FILE);
    let auth = match endpoint.scheme {
        Scheme::Http => AuthMode::Plaintext,
        Scheme::Https if !mtls_dir.exists() && edge_token_path.exists() => AuthMode::Edge,
        Scheme::Https => AuthMode::Mtls,
    };
    Ok(ResolvedGateway {
        name: endpoint.to_string(),
        endpoint: endpoint.to_string(),
        auth,
        source: Source::Endpoint,
        mtls_dir,
        edge_token_path,
        user_dir,
    })
}
