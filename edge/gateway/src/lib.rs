//! The OpenShell Edge gateway: wiring of transport, authorization, services, persistence,
//! health/metrics and TLS reload into one server.
//!
//! Owns: the gRPC service implementations, who-may-call-what (`auth`), where tunnels go
//! (`tunnels`), the health listener, metrics and the TLS reload loop. Does not own: the
//! wire (`openshell-transport`), storage (`openshell-store`), certificates (`openshell-pki`).

pub mod audit;
pub mod auth;
pub mod authz;
pub mod compute;
pub mod config;
mod error;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod relays;
pub mod reload;
pub mod services;
pub mod sessions;
pub mod tunnels;

use std::sync::Arc;

pub use error::GatewayError;

use config::{GatewayConfig, LogFormat};
use openshell_proto::diagnostics_server::DiagnosticsServer;
use openshell_proto::open_shell_server::OpenShellServer;
use openshell_proto::supervisor_server::SupervisorServer;
use openshell_transport::{GrpcService, Server, ServerConfig};

/// The gateway's version, reported by Health and GetGatewayInfo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Installs the process-wide logger (binaries only).
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the gateway until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    openshell_pki::fs::ensure_private_dir(&config.state_dir)?;
    // Before the store opens: a state directory from before per-directory ids is
    // recognised by its database.
    let gateway_id = identity::resolve(&config.state_dir, config.gateway_id.as_deref())?;
    tracing::info!(gateway_id = %gateway_id, "gateway id {gateway_id}");
    let db_path = config
        .state_dir
        .join(openshell_store::SqliteStore::DEFAULT_FILE_NAME);
    let store: Arc<dyn openshell_store::Store> =
        Arc::new(openshell_store::SqliteStore::open(&db_path)?);

    let secrets = Arc::new(openshell_store::SecretBox::load_or_create(
        &config.state_dir,
    )?);
    let revocations = Arc::new(auth::Revocations::default());
    // A missing directory for the audit log is made private; an existing one (the state
    // directory, or one the operator chose such as /var/log/openshell) is left as it is.
    if let Some(dir) = config
        .audit_log
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        openshell_pki::fs::ensure_private_dir(dir)?;
    }
    let audit = Arc::new(audit::AuditLog::open(&config.audit_log).map_err(|e| {
        GatewayError::Config(format!(
            "cannot open the audit log {}: {e} (choose another --audit-log)",
            config.audit_log.display()
        ))
    })?);
    let mut trust_change = None;
    let tls = match &config.tls {
        Some(paths) => {
            let loaded = reload::load(paths)?;
            revocations.replace(loaded.revoked);
            trust_change = loaded.next_trust_change;
            Some(openshell_transport::tls::ServerTls::new(&loaded.material)?)
        }
        None => {
            tracing::warn!(
                "TLS is disabled: plaintext HTTP/2 on loopback, no authentication (local development only)"
            );
            None
        }
    };

    let compute = Arc::new(
        compute::Compute::select(
            config.driver,
            gateway_id.as_str(),
            &compute::DriverSettings {
                podman_socket: config.podman_socket.clone(),
                kubernetes: config.kubernetes.clone(),
                vm: config.vm.clone(),
            },
        )
        .await?,
    );
    let sessions: Arc<dyn sessions::SessionRegistry> = Arc::new(sessions::LocalSessions::default());
    let callback = Arc::new(std::sync::OnceLock::<String>::new());
    let unreachable = Arc::new(std::sync::OnceLock::<String>::new());
    let sandboxes = Arc::new(services::sandboxes::Sandboxes {
        store: store.clone(),
        driver: compute.active.as_ref().map(|(_, d)| d.clone()),
        sessions: sessions.clone(),
        minter: config
            .tls
            .as_ref()
            .filter(|t| t.pki_dir.join("ca.key").exists())
            .map(|t| services::sandboxes::Minter {
                pki_dir: t.pki_dir.clone(),
                validity: config.sandbox_credential_validity,
            }),
        default_image: config.sandbox_image.clone(),
        callback: callback.clone(),
        unreachable: unreachable.clone(),
        ready_timeout: config.ready_timeout,
        started_ms: now_ms(),
    });
    let rpc_metrics = Arc::new(metrics::RpcMetrics::default());
    let facts = services::openshell::GatewayFacts {
        name: gateway_id.to_string(),
        listen_addresses: Vec::new(),
    };
    let mut server_config = ServerConfig::new(config.listen, tls.clone());
    server_config.listeners = config.listeners;
    server_config.tuning = config.tuning.clone();
    server_config.shutdown_grace = config.shutdown_grace;

    // The listen address is known only after binding (port 0), so the service that reports
    // it is built with a slot filled right after.
    let facts_slot = Arc::new(std::sync::OnceLock::<services::openshell::GatewayFacts>::new());
    {
        let sandboxes = sandboxes.clone();
        tokio::spawn(async move {
            if let Err(e) = sandboxes.reconcile().await {
                tracing::warn!(error = %e, "cannot reconcile sandboxes with the runtime yet");
            }
        });
    }
    let relays = Arc::new(relays::Relays::default());
    let grpc = build_grpc(
        services::openshell::OpenShellService {
            facts: facts_slot.clone(),
            store: store.clone(),
            secrets,
            compute: compute.clone(),
            sandboxes: sandboxes.clone(),
        },
        services::supervisor::SupervisorService {
            sessions,
            relays: relays.clone(),
            sandboxes: sandboxes.clone(),
        },
        auth::AuthLayer {
            tls: tls.is_some(),
            revocations: revocations.clone(),
            metrics: rpc_metrics.clone(),
            audit: audit.clone(),
        },
    );
    let tunnels = Arc::new(tunnels::Tunnels {
        services: config.tunnel_targets.clone(),
        tls: tls.is_some(),
        revocations: revocations.clone(),
        sandboxes,
        relays,
        audit,
    });
    let server = Server::bind(server_config, grpc, tunnels).await?;
    let addr = server.local_addr();
    let mut listening = Vec::new();
    if config.listeners.quic {
        listening.push(format!("quic://{addr}"));
    }
    if config.listeners.tcp {
        listening.push(format!("tcp://{addr}"));
    }
    let alias = match compute.active.as_ref().map(|(n, _)| *n) {
        Some("podman") => "host.containers.internal",
        _ => "host.docker.internal",
    };
    let _ = callback.set(
        config
            .sandbox_callback
            .clone()
            .unwrap_or_else(|| format!("https://{alias}:{}", addr.port())),
    );
    // VMs reach the gateway on the host's loopback through the one forward QEMU makes for
    // them (see the VM driver's guest module), so only containers need a non-loopback
    // listener.
    let vm = compute.active.as_ref().is_some_and(|(n, _)| *n == "vm");
    let on_kubernetes = compute
        .active
        .as_ref()
        .is_some_and(|(n, _)| *n == "kubernetes");
    // Known now, so a create fails at once with the fix instead of waiting out
    // --ready-timeout for a supervisor that cannot connect.
    let unreachable_why = if on_kubernetes && config.sandbox_callback.is_none() {
        // No host alias exists in a cluster: only the operator knows the Service or
        // address that Pods reach the gateway by.
        Some(
            "sandbox pods cannot know how to reach this gateway: restart it with --sandbox-callback https://ADDRESS:PORT (e.g. the gateway's Service)"
                .to_string(),
        )
    } else if compute.active.is_some()
        && !vm
        && addr.ip().is_loopback()
        && config.sandbox_callback.is_none()
    {
        Some(format!(
            "sandboxes cannot connect back to this gateway: it listens on {addr}, a loopback address containers cannot reach; restart it with --listen 0.0.0.0:{port} (or the container bridge address), or pass --sandbox-callback https://ADDRESS:PORT with an address containers reach it by",
            port = addr.port()
        ))
    } else {
        None
    };
    if let Some(why) = unreachable_why {
        tracing::warn!("{why}");
        let _ = unreachable.set(why);
    }
    let _ = facts_slot.set(services::openshell::GatewayFacts {
        listen_addresses: listening.clone(),
        ..facts
    });

    if let Some(health_addr) = config.health_listen {
        let listener = health::bind(health_addr).await?;
        let bound = listener.local_addr().unwrap_or(health_addr);
        tracing::info!(addr = %bound, "health listener on http://{bound}");
        tokio::spawn(health::serve(
            listener,
            health::HealthState {
                store: store.clone(),
                rpc: rpc_metrics.clone(),
                transport: server.metrics(),
                registry: server.registry(),
            },
        ));
    }
    if let (Some(paths), Some(tls)) = (config.tls.clone(), tls) {
        tokio::spawn(reload::watch(
            paths,
            tls,
            revocations,
            server.registry(),
            config.reload_interval,
            trust_change,
        ));
    }
    tracing::info!(addr = %addr, transports = %listening.join(","), "listening on {addr}");
    let served = server.serve(shutdown).await;
    if let Some((_, driver)) = &compute.active {
        driver.shutdown().await;
    }
    served?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// The gRPC services behind the authorization layer.
fn build_grpc(
    openshell: services::openshell::OpenShellService,
    supervisor: services::supervisor::SupervisorService,
    auth: auth::AuthLayer,
) -> GrpcService {
    let routes = tonic::service::Routes::new(OpenShellServer::new(openshell))
        .add_service(DiagnosticsServer::new(
            services::diagnostics::DiagnosticsService,
        ))
        .add_service(SupervisorServer::new(supervisor))
        .prepare();
    GrpcService::new(tower::ServiceBuilder::new().layer(auth).service(routes))
}
