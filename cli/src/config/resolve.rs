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
    resolve_optional_in(layout, env, gateway_flag, endpoint_flag)?.ok_or_else(no_active_gateway)
}

/// As [`resolve_in`], but `Ok(None)` when nothing selects a gateway (no flag, no env, no
/// active file): for commands such as `status` that report "not configured" instead of
/// failing.
pub fn resolve_optional_in(
    layout: &Layout,
    env: &Env,
    gateway_flag: Option<&str>,
    endpoint_flag: Option<&str>,
) -> Result<Option<ResolvedGateway>, CliError> {
    if let Some(url) = endpoint_flag {
        return resolve_endpoint(layout, env, gateway_flag, url).map(Some);
    }
    let Some(name) = selected_name(layout, env, gateway_flag)? else {
        return Ok(None);
    };
    let reg = layout
        .lookup(&name)?
        .ok_or_else(|| unknown_gateway(&name))?;
    from_registration(layout, &reg).map(Some)
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
        // The registered endpoint is the same gateway; its spelling (and port default, for
        // metadata written by other tools) is the one to dial.
        return from_registration(layout, reg);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::metadata::GatewayMetadata;

    struct Fixture {
        _tmp: tempfile::TempDir,
        layout: Layout,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(Some(tmp.path().join("user")), tmp.path().join("system"));
        Fixture { _tmp: tmp, layout }
    }

    fn register(layout: &Layout, name: &str, url: &str) {
        let ep = Endpoint::parse_input(url).unwrap();
        let meta = GatewayMetadata::new(name, &ep, false, AuthMode::Plaintext);
        layout
            .write_metadata(&GatewayName::parse(name).unwrap(), &meta)
            .unwrap();
    }

    fn env_with_gateway(name: Option<&str>) -> Env {
        Env {
            gateway: name.map(str::to_string),
            ..Env::default()
        }
    }

    #[test]
    fn flag_beats_env_beats_active() {
        let f = fixture();
        register(&f.layout, "a", "http://127.0.0.1:1");
        register(&f.layout, "b", "http://127.0.0.1:2");
        f.layout
            .set_active(&GatewayName::parse("a").unwrap())
            .unwrap();
        let none = env_with_gateway(None);
        let env_b = env_with_gateway(Some("b"));
        assert_eq!(resolve_in(&f.layout, &none, None, None).unwrap().name, "a");
        assert_eq!(resolve_in(&f.layout, &env_b, None, None).unwrap().name, "b");
        assert_eq!(
            resolve_in(&f.layout, &env_b, Some("a"), None).unwrap().name,
            "a"
        );
        let by_url = resolve_in(&f.layout, &none, Some("a"), Some("http://127.0.0.1:2/")).unwrap();
        assert_eq!((by_url.name.as_str(), by_url.source), ("b", Source::User));
    }

    #[test]
    fn nothing_selected_is_none_or_the_upstream_error() {
        let f = fixture();
        let none = env_with_gateway(None);
        assert!(
            resolve_optional_in(&f.layout, &none, None, None)
                .unwrap()
                .is_none()
        );
        let err = resolve_in(&f.layout, &none, None, None).unwrap_err();
        assert!(err.to_string().starts_with("No active gateway."), "{err}");
        let err = resolve_in(&f.layout, &none, Some("x"), None).unwrap_err();
        assert!(err.to_string().starts_with("Unknown gateway 'x'."), "{err}");
    }

    #[test]
    fn raw_endpoint_uses_default_name_for_credentials() {
        let f = fixture();
        let none = env_with_gateway(None);
        let r = resolve_in(&f.layout, &none, None, Some("127.0.0.1:9")).unwrap();
        assert_eq!(r.name, "https://127.0.0.1:9");
        assert_eq!(r.source, Source::Endpoint);
        assert_eq!(r.auth, AuthMode::Mtls);
        assert!(r.mtls_dir.ends_with("gateways/openshell/mtls"));
    }
}
