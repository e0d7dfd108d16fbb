//! `openshell.v1.OpenShell`: the control plane users call. Methods not implemented here
//! answer UNIMPLEMENTED through the generated defaults.

use std::sync::Arc;

use openshell_proto::open_shell_server::OpenShell;
use openshell_proto::{
    CreateProviderRequest, CreateSandboxRequest, DeleteProviderRequest, DeleteProviderResponse,
    DeleteSandboxRequest, DeleteSandboxResponse, GatewayInfo, GetCurrentUserRequest,
    GetGatewayInfoRequest, GetProviderRequest, GetSandboxRequest, HealthRequest, HealthResponse,
    ListProvidersRequest, ListProvidersResponse, ListSandboxesRequest, ListSandboxesResponse,
    Principal as WirePrincipal, Provider, Sandbox, ServingStatus, StartSandboxRequest,
    StopSandboxRequest, UpdateProviderRequest,
};

use super::providers;
use openshell_transport::RequestContext;
use tonic::{Request, Response, Status};

use crate::auth::{AuditTarget, Caller};

/// Facts about this gateway that RPCs report.
#[derive(Debug, Clone)]
pub struct GatewayFacts {
    pub name: String,
    pub listen_addresses: Vec<String>,
}

pub struct OpenShellService {
    /// Filled once the listeners are bound (the port may have been 0).
    pub facts: Arc<std::sync::OnceLock<GatewayFacts>>,
    pub store: Arc<dyn openshell_store::Store>,
    pub secrets: Arc<openshell_store::SecretBox>,
    pub compute: Arc<crate::compute::Compute>,
    pub sandboxes: Arc<super::sandboxes::Sandboxes>,
}

pub(crate) fn wire_principal(c: &Caller) -> WirePrincipal {
    let p = &c.principal;
    WirePrincipal {
        subject: p.subject.clone(),
        roles: p.roles.clone(),
        auth: p.auth.as_str().to_string(),
        certificate_serial: p.serial.clone(),
        certificate_not_after_ms: p
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    }
}

fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// Names the object of a mutating request in its audit line.
fn audit_target<T>(req: &Request<T>, target: String) {
    if let Some(t) = req.extensions().get::<AuditTarget>() {
        t.set(target);
    }
}

impl OpenShellService {
    async fn status(&self) -> ServingStatus {
        match self.store.ping().await {
            Ok(_) => ServingStatus::Healthy,
            Err(_) => ServingStatus::Degraded,
        }
    }
}

#[tonic::async_trait]
impl OpenShell for OpenShellService {
    async fn health(
        &self,
        _req: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            status: self.status().await as i32,
            version: crate::VERSION.to_string(),
        }))
    }

    async fn get_gateway_info(
        &self,
        req: Request<GetGatewayInfoRequest>,
    ) -> Result<Response<GatewayInfo>, Status> {
        let caller = caller(&req)?;
        let ctx = req.extensions().get::<RequestContext>();
        Ok(Response::new(GatewayInfo {
            gateway: self.facts.get().map(|f| f.name.clone()).unwrap_or_default(),
            version: crate::VERSION.to_string(),
            status: self.status().await as i32,
            listen_addresses: self
                .facts
                .get()
                .map(|f| f.listen_addresses.clone())
                .unwrap_or_default(),
            compute_drivers: self.compute.describe().await,
            transport: ctx
                .map(|c| c.conn.transport.as_str().to_string())
                .unwrap_or_default(),
            early_data: ctx.is_some_and(|c| c.early_data),
            caller: Some(wire_principal(&caller)),
        }))
    }

    async fn get_current_user(
        &self,
        req: Request<GetCurrentUserRequest>,
    ) -> Result<Response<WirePrincipal>, Status> {
        Ok(Response::new(wire_principal(&caller(&req)?)))
    }

    async fn create_provider(
        &self,
        req: Request<CreateProviderRequest>,
    ) -> Result<Response<Provider>, Status> {
        let caller = caller(&req)?;
        audit_target(&req, format!("provider/{}", req.get_ref().name));
        let p = providers::create(&*self.store, &self.secrets, &caller, req.into_inner()).await?;
        tracing::info!(provider = %p.meta.as_ref().map(|m| m.name.as_str()).unwrap_or(""), "provider created");
        Ok(Response::new(p))
    }

    async fn get_provider(
        &self,
        req: Request<GetProviderRequest>,
    ) -> Result<Response<Provider>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            providers::get(&*self.store, &caller, &req.into_inner().name).await?,
        ))
    }

    async fn list_providers(
        &self,
        req: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        let caller = caller(&req)?;
        let req = req.into_inner();
        let limit = (req.limit > 0).then_some(req.limit as usize);
        let providers = providers::list(&*self.store, &caller, limit, req.offset as usize).await?;
        Ok(Response::new(ListProvidersResponse { providers }))
    }

    async fn update_provider(
        &self,
        req: Request<UpdateProviderRequest>,
    ) -> Result<Response<Provider>, Status> {
        let caller = caller(&req)?;
        audit_target(&req, format!("provider/{}", req.get_ref().name));
        Ok(Response::new(
            providers::update(&*self.store, &self.secrets, &caller, req.into_inner()).await?,
        ))
    }

    async fn delete_provider(
        &self,
        req: Request<DeleteProviderRequest>,
    ) -> Result<Response<DeleteProviderResponse>, Status> {
        let caller = caller(&req)?;
        audit_target(&req, format!("provider/{}", req.get_ref().name));
        providers::delete(&*self.store, &caller, &req.into_inner().name).await?;
        Ok(Response::new(DeleteProviderResponse { deleted: true }))
    }

    async fn create_sandbox(
        &self,
        req: Request<CreateSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let caller = caller(&req)?;
        audit_target(&req, format!("sandbox/{}", req.get_ref().name));
        Ok(Response::new(
            self.sandboxes.create(&caller, req.into_inner()).await?,
        ))
    }

    async fn get_sandbox(
        &self,
        req: Request<GetSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(
            self.sandboxes.get(&caller, &req.into_inner().name).await?,
        ))
    }

    async fn list_sandboxes(
        &self,
        req: Request<ListSandboxesRequest>,
    ) -> Result<Response<ListSandboxesResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let sandboxes = self
            .sandboxes
            .list(&caller, r.selector, r.limit, r.offset, r.all)
            .await?;
        Ok(Response::new(ListSandboxesResponse { sandboxes }))
    }

    async fn delete_sandbox(
        &self,
        req: Request<DeleteSandboxRequest>,
    ) -> Result<Response<DeleteSandboxResponse>, Status> {
        let caller = caller(&req)?;
        audit_target(&req, format!("sandbox/{}", req.get_ref().name));
        self.sandboxes
            .delete(&caller, &req.into_inner().name)
            .await?;
        Ok(Response::new(DeleteSandboxResponse { deleted: true }))
    }

    async fn stop_sandbox(
        &self,
        req: Request<StopSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let caller = caller(&req)?;
        audit_target(&req, format!("sandbox/{}", req.get_ref().name));
        Ok(Response::new(
            self.sandboxes.stop(&caller, &req.into_inner().name).await?,
        ))
    }

    async fn start_sandbox(
        &self,
        req: Request<StartSandboxRequest>,
    ) -> Result<Response<Sandbox>, Status> {
        let caller = caller(&req)?;
        audit_target(&req, format!("sandbox/{}", req.get_ref().name));
        Ok(Response::new(
            self.sandboxes
                .start(&caller, &req.into_inner().name)
                .await?,
        ))
    }

    async fn get_sandbox_logs(
        &self,
        req: Request<openshell_proto::GetSandboxLogsRequest>,
    ) -> Result<
        Response<
            std::pin::Pin<
                Box<dyn futures::Stream<Item = Result<openshell_proto::LogLine, Status>> + Send>,
            >,
        >,
        Status,
    > {
        use futures::StreamExt;
        let caller = caller(&req)?;
        let r = req.into_inner();
        let lines = self
            .sandboxes
            .logs(&caller, &r.name, r.follow, r.tail)
            .await?;
        Ok(Response::new(
            lines.map(|l| l.map_err(Status::from)).boxed(),
        ))
    }

    async fn watch_sandboxes(
        &self,
        req: Request<openshell_proto::WatchSandboxesRequest>,
    ) -> Result<
        Response<
            std::pin::Pin<
                Box<
                    dyn futures::Stream<Item = Result<openshell_proto::SandboxEvent, Status>>
                        + Send,
                >,
            >,
        >,
        Status,
    > {
        use futures::StreamExt;
        let caller = caller(&req)?;
        let r = req.into_inner();
        let events = self.sandboxes.watch(&caller, r.name, r.selector, r.all)?;
        Ok(Response::new(
            events.map(|e| e.map_err(Status::from)).boxed(),
        ))
    }
}
