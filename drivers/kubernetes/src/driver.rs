//! [`KubernetesDriver`]: the [`ComputeDriver`] calls as apiserver requests.

use openshell_drivers::errtext::{chain, lowercase_first, root_cause};
use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt::Debug;
use std::time::Duration;

use futures::io::AsyncBufReadExt;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource, ResourceExt};
use openshell_drivers::{
    ComputeDriver, DriverError, DriverHealth, DriverInfo, EventStream, LineSplitter, LogOptions,
    LogStream, OutputStream, SandboxId, SandboxName, SandboxSpec, WorkloadEvent, WorkloadState,
    WorkloadStatus,
};
use serde::de::DeserializeOwned;

use crate::mirror::Mirror;
use crate::objects::{self, CONTAINER};
use crate::{ClusterSource, KubeError, KubernetesConfig};

/// Runs sandboxes as Pods (see the crate docs). [`connect`](Self::connect) reads the
/// cluster settings but does not talk to the apiserver: one that is down shows up as
/// [`DriverError::RuntimeUnavailable`] on calls and as unhealthy in `info`.
pub struct KubernetesDriver {
    config: KubernetesConfig,
    client: Client,
    errors: Errors,
    /// What `get` and `list` read (see the `mirror` module).
    mirror: Mirror,
}

/// A failed request: the apiserver's or the client's error, or no answer in time.
pub(crate) enum Fail {
    Kube(kube::Error),
    Timeout,
}

impl Fail {
    fn code(&self) -> Option<u16> {
        match self {
            Fail::Kube(kube::Error::Api(s)) => Some(s.code),
            _ => None,
        }
    }
}

/// Maps failures to [`DriverError`]s that name the cluster and say what to do. Cloned into
/// streams that outlive the call that made them.
#[derive(Clone)]
pub(crate) struct Errors {
    endpoint: String,
    namespace: String,
    source: String,
    request_timeout: Duration,
}

const RUNTIME: &str = "kubernetes";

impl Errors {
    fn unavailable(&self, reason: String) -> DriverError {
        DriverError::RuntimeUnavailable {
            runtime: RUNTIME.into(),
            endpoint: self.endpoint.clone(),
            reason,
            hint: format!(
                "start the Kubernetes apiserver, or check the cluster address in the {}",
                self.source
            ),
        }
    }

    fn backend(&self, op: &str, message: String) -> DriverError {
        DriverError::Backend {
            runtime: RUNTIME.into(),
            op: op.to_string(),
            message,
        }
    }

    fn no_namespace(&self, op: &str) -> DriverError {
        let ns = &self.namespace;
        self.backend(
            op,
            format!(
                "namespace `{ns}` does not exist: create it (kubectl create namespace {ns}) or \
                 choose another with --k8s-namespace"
            ),
        )
    }

    pub(crate) fn map(&self, op: &str, f: Fail) -> DriverError {
        let e = match f {
            Fail::Timeout => {
                return self.unavailable(format!(
                    "no answer within {} s",
                    self.request_timeout.as_secs()
                ));
            }
            Fail::Kube(e) => e,
        };
        let ns = &self.namespace;
        match e {
            kube::Error::Api(s) => {
                let message = lowercase_first(s.message.trim());
                let kind = s.details.as_ref().map(|d| d.kind.as_str()).unwrap_or("");
                match s.code {
                    401 => self.backend(
                        op,
                        format!(
                            "the apiserver refused the credentials of the {} (401 \
                             Unauthorized): renew the token or certificate there",
                            self.source
                        ),
                    ),
                    403 if message.contains("service account") => self.backend(
                        op,
                        format!(
                            "{message} (403 Forbidden): create the service account in namespace \
                             `{ns}`, or choose an existing one with --k8s-service-account"
                        ),
                    ),
                    403 if message.contains("runtimeclass") || message.contains("RuntimeClass") => {
                        self.backend(
                            op,
                            format!(
                                "{message} (403 Forbidden): create the RuntimeClass, or choose \
                                 an existing one with --k8s-runtime-class"
                            ),
                        )
                    }
                    403 if !message.contains(" cannot ") => {
                        self.backend(op, format!("{message} (403 Forbidden)"))
                    }
                    403 => self.backend(
                        op,
                        format!(
                            "{message} (403 Forbidden): grant the gateway's account get, list, \
                             watch, create and delete on pods and secrets, patch on secrets, and create and delete on networkpolicies, in namespace `{ns}` \
                             (RBAC), or pick a namespace where it has them with --k8s-namespace"
                        ),
                    ),
                    404 if kind == "namespaces" || message.starts_with("namespaces \"") => {
                        self.no_namespace(op)
                    }
                    409 => DriverError::AlreadyExists { what: message },
                    400 | 422 => DriverError::InvalidSpec(message),
                    code => self.backend(op, format!("{message} (HTTP {code})")),
                }
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                self.unavailable(root_cause(&e))
            }
            kube::Error::Auth(_) => self.backend(
                op,
                format!(
                    "cannot authenticate with the {}: {}",
                    self.source,
                    chain(&e)
                ),
            ),
            other => self.backend(op, chain(&other)),
        }
    }
}

/// Where [`KubernetesDriver::objects`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fresh {
    /// The mirror when in sync (reads).
    Mirror,
    /// The apiserver (writes).
    Apiserver,
}

/// Pods and Secrets of the selected sandboxes, grouped by sandbox id.
type Objects = BTreeMap<SandboxId, (Option<Pod>, Option<Secret>)>;

impl KubernetesDriver {
    /// Reads the cluster settings (the kubeconfig file, or the in-cluster service account)
    /// and builds the client. Fails on missing or unusable settings; does not contact the
    /// apiserver.
    pub async fn connect(config: KubernetesConfig) -> Result<Self, KubeError> {
        let source_desc = config.source.to_string();
        let mut kc = match &config.source {
            ClusterSource::Kubeconfig(path) => {
                if !path.is_file() {
                    return Err(KubeError::KubeconfigMissing { path: path.clone() });
                }
                let bad = |e: &(dyn StdError + 'static)| KubeError::Kubeconfig {
                    path: path.clone(),
                    reason: chain(e),
                };
                let file = Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| bad(&e))?
            }
            ClusterSource::InCluster => kube::Config::incluster()
                .map_err(|e| KubeError::NotInCluster { reason: chain(&e) })?,
            ClusterSource::Infer => kube::Config::infer()
                .await
                .map_err(|e| KubeError::NoCluster { reason: chain(&e) })?,
        };
        kc.connect_timeout = Some(config.request_timeout);
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| kc.default_namespace.clone());
        let valid = !namespace.is_empty()
            && namespace.len() <= 63
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !namespace.starts_with('-')
            && !namespace.ends_with('-');
        if !valid {
            return Err(KubeError::InvalidNamespace(namespace));
        }
        let endpoint = kc.cluster_url.to_string().trim_end_matches('/').to_string();
        let client = Client::try_from(kc).map_err(|e| KubeError::Client {
            source_desc: source_desc.clone(),
            reason: chain(&e),
        })?;
        let errors = Errors {
            endpoint,
            namespace,
            source: source_desc,
            request_timeout: config.request_timeout,
        };
        let ns = &errors.namespace;
        let mirror = Mirror::start(
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            config.gateway.clone(),
            errors.clone(),
            config.request_timeout,
        );
        Ok(Self {
            config,
            client,
            errors,
            mirror,
        })
    }

    /// The namespace the sandboxes live in.
    pub fn namespace(&self) -> &str {
        &self.errors.namespace
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.errors.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.errors.namespace)
    }

    fn network_policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.errors.namespace)
    }

    /// Removes a sandbox's NetworkPolicy; one that is gone already is fine.
    async fn delete_network_policy(&self, object: &str) -> Result<(), DriverError> {
        match self
            .raw(
                self.network_policies()
                    .delete(object, &DeleteParams::default()),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(f) if f.code() == Some(404) => Ok(()),
            Err(f) => Err(self
                .errors
                .map(&format!("delete network policy {object}"), f)),
        }
    }

    /// One request, bounded by the request timeout.
    async fn raw<T>(&self, fut: impl Future<Output = kube::Result<T>>) -> Result<T, Fail> {
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(r) => r.map_err(Fail::Kube),
            Err(_) => Err(Fail::Timeout),
        }
    }

    /// One request whose failure is reported as is.
    async fn call<T>(
        &self,
        op: &str,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, DriverError> {
        self.raw(fut).await.map_err(|f| self.errors.map(op, f))
    }

    /// This gateway's Pods and Secrets (of sandbox `id` only, with `id`), from the mirror
    /// when it is in sync and `fresh` is not asked for, else from the apiserver. Writes ask
    /// for fresh objects: they act on what the apiserver has, not on a copy.
    async fn objects(&self, id: Option<&SandboxId>, fresh: Fresh) -> Result<Objects, DriverError> {
        let copy = match fresh {
            Fresh::Mirror => self.mirror.snapshot(id),
            Fresh::Apiserver => None,
        };
        let (pods, secrets) = match copy {
            Some(copy) => copy,
            None => {
                let lp = ListParams::default().labels(&objects::selector(&self.config.gateway, id));
                let pods = self.call("list pods", self.pods().list(&lp)).await?;
                let secrets = self.call("list secrets", self.secrets().list(&lp)).await?;
                (pods.items, secrets.items)
            }
        };
        let wanted = |meta: &kube::core::ObjectMeta| {
            objects::owned_by(meta, &self.config.gateway)
                && id.is_none_or(|id| objects::id_of(meta).as_ref() == Some(id))
        };
        let mut out = Objects::new();
        for pod in pods.into_iter().filter(|p| wanted(&p.metadata)) {
            if objects::owned_by(&pod.metadata, &self.config.gateway)
                && let Some(id) = objects::id_of(&pod.metadata)
            {
                out.entry(id).or_default().0 = Some(pod);
            }
        }
        for secret in secrets.into_iter().filter(|s| wanted(&s.metadata)) {
            if objects::owned_by(&secret.metadata, &self.config.gateway)
                && let Some(id) = objects::id_of(&secret.metadata)
            {
                out.entry(id).or_default().1 = Some(secret);
            }
        }
        Ok(out)
    }

    async fn find(
        &self,
        id: &SandboxId,
        fresh: Fresh,
    ) -> Result<(Option<Pod>, Option<Secret>), DriverError> {
        let found = self
            .objects(Some(id), fresh)
            .await?
            .remove(id)
            .unwrap_or_default();
        match found {
            (None, None) => Err(DriverError::NotFound {
                runtime: RUNTIME.into(),
                id: id.clone(),
            }),
            found => Ok(found),
        }
    }

    fn status(
        &self,
        pod: Option<&Pod>,
        secret: Option<&Secret>,
    ) -> Result<WorkloadStatus, DriverError> {
        objects::status_of(&self.errors.namespace, pod, secret).map_err(|why| {
            let name = pod
                .map(|p| p.name_any())
                .or(secret.map(|s| s.name_any()))
                .unwrap_or_default();
            self.errors.backend(
                &format!("read sandbox objects {name}"),
                format!("{why}; delete the pod and secret by hand if OpenShell did not make them"),
            )
        })
    }

    /// Deletes a Pod (404 is success) and waits until it is gone, up to the stop grace
    /// period plus one request timeout. Returns whether it is gone.
    async fn delete_pod(&self, pod: &Pod) -> Result<bool, DriverError> {
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        match self
            .raw(self.pods().delete(&name, &DeleteParams::default()))
            .await
        {
            Ok(_) => {}
            Err(f) if f.code() == Some(404) => {
                self.mirror.forget_pod(pod);
                return Ok(true);
            }
            Err(f) => return Err(self.errors.map(&format!("delete pod {name}"), f)),
        }
        let limit = self.config.stop_grace + self.config.request_timeout;
        let gone = self.wait_gone(&name, &uid, limit).await?;
        if gone {
            self.mirror.forget_pod(pod);
        }
        Ok(gone)
    }

    /// Waits, through a watch on the one Pod, until the Pod `name` with `uid` is gone.
    async fn wait_gone(&self, name: &str, uid: &str, limit: Duration) -> Result<bool, DriverError> {
        let op = format!("wait for pod {name} to go");
        let deadline = tokio::time::Instant::now() + limit;
        let api = self.pods();
        let Some(current) = self.call(&op, api.get_opt(name)).await? else {
            return Ok(true);
        };
        if current.uid().as_deref() != Some(uid) {
            return Ok(true);
        }
        let rv = current.resource_version().unwrap_or_default();
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(limit.as_secs().clamp(1, 290) as u32);
        let mut events = self.call(&op, api.watch(&wp, &rv)).await?.boxed();
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) | Ok(None) => return Ok(false),
                Ok(Some(Ok(WatchEvent::Deleted(_)))) => return Ok(true),
                Ok(Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p))))
                    if p.uid().as_deref() != Some(uid) =>
                {
                    return Ok(true);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(self.errors.map(&op, Fail::Kube(e))),
            }
        }
    }

    /// Creates the Pod of `secret`'s template.
    async fn create_pod(&self, pod: &Pod, what: &str) -> Result<Pod, DriverError> {
        let name = pod.name_any();
        match self
            .raw(self.pods().create(&PostParams::default(), pod))
            .await
        {
            Ok(p) => Ok(p),
            Err(f) if f.code() == Some(409) => Err(DriverError::AlreadyExists {
                what: format!("{what} (pod {}/{name})", self.errors.namespace),
            }),
            Err(f) => Err(self.errors.map(&format!("create pod {name}"), f)),
        }
    }
}

/// A watch on `api`'s objects matching `selector` from resource version `rv` on, resumed
/// from the last version seen when the apiserver closes it (it does so every few minutes).
/// Ends after yielding an error.
pub(crate) fn rewatch<K>(
    api: Api<K>,
    selector: String,
    rv: String,
    errors: Errors,
) -> impl Stream<Item = Result<WatchEvent<K>, DriverError>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    struct State<K> {
        api: Api<K>,
        wp: WatchParams,
        rv: String,
        events: Option<BoxStream<'static, kube::Result<WatchEvent<K>>>>,
        errors: Errors,
    }
    let state = State {
        api,
        wp: WatchParams::default().labels(&selector).timeout(290),
        rv,
        events: None,
        errors,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        loop {
            let events = match &mut st.events {
                Some(events) => events,
                None => match st.api.watch(&st.wp, &st.rv).await {
                    Ok(events) => st.events.insert(events.boxed()),
                    Err(e) => {
                        let err = st.errors.map("watch", Fail::Kube(e));
                        return Some((Err(err), None));
                    }
                },
            };
            match events.next().await {
                // Closed by the apiserver at its timeout (or because it went away: then
                // the next watch request fails and says so).
                None => st.events = None,
                Some(Ok(WatchEvent::Bookmark(b))) => st.rv = b.metadata.resource_version,
                Some(Ok(WatchEvent::Error(s))) => {
                    let err = if s.code == 410 {
                        st.errors.backend(
                            "watch",
                            "the watch fell too far behind the apiserver (410 Gone): watch again"
                                .into(),
                        )
                    } else {
                        st.errors.map("watch", Fail::Kube(kube::Error::Api(s)))
                    };
                    return Some((Err(err), None));
                }
                Some(Ok(event)) => {
                    if let WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) =
                        &event
                        && let Some(v) = o.resource_version()
                    {
                        st.rv = v;
                    }
                    return Some((Ok(event), Some(st)));
                }
                Some(Err(e)) => {
                    let err = st.errors.map("watch", Fail::Kube(e));
                    return Some((Err(err), None));
                }
            }
        }
    })
}

/// What a watch event of either kind means for a sandbox, before lookups.
enum Seen {
    Pod(Box<WatchEvent<Pod>>),
    Secret(Box<WatchEvent<Secret>>),
}

#[async_trait::async_trait]
impl ComputeDriver for KubernetesDriver {
    async fn info(&self) -> DriverInfo {
        let version = self
            .call("read the version", self.client.apiserver_version())
            .await
            .map(|v| v.git_version);
        let health = match &version {
            Err(e) => DriverHealth::Unhealthy(e.to_string()),
            Ok(_) => {
                let namespaces: Api<Namespace> = Api::all(self.client.clone());
                match self.raw(namespaces.get_opt(&self.errors.namespace)).await {
                    Ok(None) => DriverHealth::Unhealthy(
                        self.errors.no_namespace("read the namespace").to_string(),
                    ),
                    // A gateway confined to its namespace may not read namespaces: fine.
                    _ => DriverHealth::Healthy,
                }
            }
        };
        DriverInfo {
            name: RUNTIME.into(),
            endpoint: format!(
                "{} (namespace {})",
                self.errors.endpoint, self.errors.namespace
            ),
            version: version.ok(),
            health,
        }
    }

    async fn create(
        &self,
        id: &SandboxId,
        name: &SandboxName,
        spec: &SandboxSpec,
    ) -> Result<WorkloadStatus, DriverError> {
        spec.validate()?;
        let (secret, pod) = objects::build(&self.config, id, name, spec)?;
        if !self.objects(Some(id), Fresh::Apiserver).await?.is_empty() {
            return Err(DriverError::AlreadyExists {
                what: format!("a workload for sandbox {id}"),
            });
        }
        let object = objects::object_name(&self.config, name);
        let ns = &self.errors.namespace;
        let taken = format!("a sandbox named `{name}`");
        // The Secret first: it holds the credential the Pod refers to, and its name being
        // taken is how a clash with another sandbox (of any gateway) shows.
        let secret = match self
            .raw(self.secrets().create(&PostParams::default(), &secret))
            .await
        {
            Ok(s) => s,
            Err(f) if f.code() == Some(409) => {
                return Err(DriverError::AlreadyExists {
                    what: format!("{taken} (secret {ns}/{object})"),
                });
            }
            Err(f) => return Err(self.errors.map(&format!("create secret {object}"), f)),
        };
        let policy = objects::network_policy(&self.config, id, name);
        let created = match self
            .raw(
                self.network_policies()
                    .create(&PostParams::default(), &policy),
            )
            .await
        {
            // Left behind by an earlier sandbox of this name whose delete was cut short:
            // replace it, it selects by sandbox id.
            Err(f) if f.code() == Some(409) => match self.delete_network_policy(&object).await {
                Ok(()) => self
                    .raw(
                        self.network_policies()
                            .create(&PostParams::default(), &policy),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|f| {
                        self.errors
                            .map(&format!("create network policy {object}"), f)
                    }),
                Err(e) => Err(e),
            },
            Err(f) => Err(self
                .errors
                .map(&format!("create network policy {object}"), f)),
            Ok(_) => Ok(()),
        };
        let created = match created {
            Ok(()) => self.create_pod(&pod, &taken).await,
            Err(e) => Err(e),
        };
        match created {
            Ok(pod) => {
                self.mirror.put_secret(&secret);
                self.mirror.put_pod(&pod);
                self.status(Some(&pod), Some(&secret))
            }
            Err(e) => {
                // Nothing half-created: the policy and the Secret go again.
                if let Err(cleanup) = self.delete_network_policy(&object).await {
                    tracing::warn!(policy = %object, error = %cleanup, "could not remove the network policy of a pod that failed to be created");
                }
                if let Err(f) = self
                    .raw(self.secrets().delete(&object, &DeleteParams::default()))
                    .await
                    && f.code() != Some(404)
                {
                    let cleanup = self.errors.map("delete secret", f);
                    tracing::warn!(secret = %object, error = %cleanup, "could not remove the secret of a pod that failed to be created");
                }
                Err(e)
            }
        }
    }

    async fn refresh_credentials(
        &self,
        id: &SandboxId,
        credentials: &openshell_drivers::Credentials,
    ) -> Result<(), DriverError> {
        let (pod, secret) = self.find(id, Fresh::Apiserver).await?;
        let Some(secret) = secret else {
            return Err(match pod {
                None => DriverError::NotFound {
                    runtime: RUNTIME.into(),
                    id: id.clone(),
                },
                Some(_) => self.errors.backend(
                    "refresh the credential",
                    format!(
                        "the secret of sandbox {id} is gone: delete the sandbox and create it again"
                    ),
                ),
            });
        };
        let data: BTreeMap<String, k8s_openapi::ByteString> = credentials
            .files()
            .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.to_vec())))
            .collect();
        // A merge patch of `data`: keys not named (the SSH host key) stay.
        let patch = serde_json::json!({ "data": data });
        let name = secret.name_any();
        let patched = self
            .call(
                &format!("update secret {name}"),
                self.secrets()
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
        self.mirror.put_secret(&patched);
        Ok(())
    }

    async fn start(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let (pod, secret) = self.find(id, Fresh::Apiserver).await?;
        if let Some(pod) = &pod {
            let deleting = pod.metadata.deletion_timestamp.is_some();
            let live = matches!(
                objects::state_of(pod),
                WorkloadState::Running | WorkloadState::Creating
            );
            if live && !deleting {
                return self.status(Some(pod), secret.as_ref());
            }
            // Exited (or being stopped): make way for a new Pod of the same name.
            if !self.delete_pod(pod).await? {
                return Err(self.errors.backend(
                    "start",
                    format!(
                        "the previous pod {} is still terminating: try again in a moment",
                        pod.name_any()
                    ),
                ));
            }
        }
        let Some(secret) = secret else {
            return Err(self.errors.backend(
                "start",
                format!(
                    "the secret of sandbox {id} is gone: delete the sandbox and create it again"
                ),
            ));
        };
        let template = objects::template_of(&secret).ok_or_else(|| {
            self.errors.backend(
                "start",
                format!(
                    "secret {} holds no readable pod template: delete the sandbox and create it again",
                    secret.name_any()
                ),
            )
        })?;
        let pod = self
            .create_pod(&template, &format!("a pod for sandbox {id}"))
            .await?;
        self.mirror.put_pod(&pod);
        self.status(Some(&pod), Some(&secret))
    }

    async fn stop(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let (pod, secret) = self.find(id, Fresh::Apiserver).await?;
        let Some(secret) = secret else {
            return Err(self.errors.backend(
                "stop",
                format!("the secret of sandbox {id} is gone, so it could not start again: delete the sandbox"),
            ));
        };
        if let Some(pod) = &pod
            && !self.delete_pod(pod).await?
        {
            // Still terminating after the grace period: report what the apiserver says.
            let now = self
                .call("read pod", self.pods().get_opt(&pod.name_any()))
                .await?;
            return self.status(now.as_ref(), Some(&secret));
        }
        self.status(None, Some(&secret))
    }

    async fn delete(&self, id: &SandboxId) -> Result<(), DriverError> {
        let found = self
            .objects(Some(id), Fresh::Apiserver)
            .await?
            .remove(id)
            .unwrap_or_default();
        // The Secret first, so that a watcher seeing the Pod go knows it is not a stop.
        if let (_, Some(secret)) = &found {
            let name = secret.name_any();
            match self
                .raw(self.secrets().delete(&name, &DeleteParams::default()))
                .await
            {
                Ok(_) => {}
                Err(f) if f.code() == Some(404) => {}
                Err(f) => return Err(self.errors.map(&format!("delete secret {name}"), f)),
            }
            self.mirror.forget_secret(secret);
        }
        if let (Some(pod), _) = &found {
            self.delete_pod(pod).await?;
        }
        // Named like the Secret and the Pod; found through either.
        let object = found
            .1
            .as_ref()
            .map(|s| s.name_any())
            .or_else(|| found.0.as_ref().map(|p| p.name_any()));
        if let Some(object) = object {
            self.delete_network_policy(&object).await?;
        }
        Ok(())
    }

    async fn get(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let (pod, secret) = self.find(id, Fresh::Mirror).await?;
        self.status(pod.as_ref(), secret.as_ref())
    }

    async fn list(&self) -> Result<Vec<WorkloadStatus>, DriverError> {
        let mut out = Vec::new();
        for (id, (pod, secret)) in self.objects(None, Fresh::Mirror).await? {
            match self.status(pod.as_ref(), secret.as_ref()) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "skipping sandbox objects that cannot be read")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn watch(&self) -> Result<EventStream, DriverError> {
        let selector = objects::selector(&self.config.gateway, None);
        // The lists give the versions to watch from: events from this moment on, and a
        // failure now (not on the first poll) when the apiserver is down.
        let lp = ListParams::default().labels(&selector).limit(1);
        let pods = self.call("list pods", self.pods().list(&lp)).await?;
        let secrets = self.call("list secrets", self.secrets().list(&lp)).await?;
        let pods_rv = pods.metadata.resource_version.unwrap_or_default();
        let secrets_rv = secrets.metadata.resource_version.unwrap_or_default();
        let seen = futures::stream::select(
            rewatch(self.pods(), selector.clone(), pods_rv, self.errors.clone())
                .map(|r| r.map(|e| Seen::Pod(Box::new(e)))),
            rewatch(self.secrets(), selector, secrets_rv, self.errors.clone())
                .map(|r| r.map(|e| Seen::Secret(Box::new(e)))),
        );
        let gateway = self.config.gateway.clone();
        let (pods, secrets) = (self.pods(), self.secrets());
        let events = seen
            // One error ends the stream (the trait's contract).
            .scan(false, |failed, r| {
                let out = if *failed {
                    None
                } else {
                    *failed = r.is_err();
                    Some(r)
                };
                futures::future::ready(out)
            })
            .filter_map(move |r| {
                let (gateway, pods, secrets) = (gateway.clone(), pods.clone(), secrets.clone());
                async move {
                    let seen = match r {
                        Ok(seen) => seen,
                        Err(e) => return Some(Err(e)),
                    };
                    let (meta, state) = match seen {
                        Seen::Pod(e) => match *e {
                            // Being deleted: its Deleted event says what it ends as.
                            WatchEvent::Modified(p) if p.metadata.deletion_timestamp.is_some() => {
                                return None;
                            }
                            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                                let state = objects::state_of(&p);
                                (p.metadata, state)
                            }
                            // A stop keeps the Secret; a delete removed it first.
                            WatchEvent::Deleted(p) => {
                                let kept = secrets.get_opt(&p.name_any()).await.ok().flatten();
                                let state = match kept {
                                    Some(_) => WorkloadState::Stopped { exit_code: 0 },
                                    None => WorkloadState::Missing,
                                };
                                (p.metadata, state)
                            }
                            _ => return None,
                        },
                        Seen::Secret(e) => match *e {
                            // A stopped sandbox deleted: no Pod will report it.
                            WatchEvent::Deleted(s) => {
                                let pod = pods.get_opt(&s.name_any()).await.ok().flatten();
                                if pod.is_some() {
                                    return None;
                                }
                                (s.metadata, WorkloadState::Missing)
                            }
                            _ => return None,
                        },
                    };
                    if !objects::owned_by(&meta, &gateway) {
                        return None;
                    }
                    let id = objects::id_of(&meta)?;
                    Some(Ok(WorkloadEvent { id, state }))
                }
            });
        Ok(events.boxed())
    }

    async fn logs(&self, id: &SandboxId, opts: LogOptions) -> Result<LogStream, DriverError> {
        let (pod, _) = self.find(id, Fresh::Apiserver).await?;
        let Some(pod) = pod else {
            return Err(self.errors.backend(
                "read logs",
                format!(
                    "sandbox {id} is stopped: its pod, and the pod's logs, are gone until it starts"
                ),
            ));
        };
        let name = pod.name_any();
        let lp = LogParams {
            container: Some(CONTAINER.into()),
            follow: opts.follow,
            // The kubelet counts whole lines, not our pieces: a tail may be longer than
            // asked for, but it is streamed, never held.
            tail_lines: opts.tail.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            ..LogParams::default()
        };
        let op = format!("read the logs of pod {name}");
        let reader = match self.raw(self.pods().log_stream(&name, &lp)).await {
            Ok(r) => r,
            // "does not have a host assigned", "container is waiting to start": the Pod
            // is not running anywhere yet; not a bad spec.
            Err(Fail::Kube(kube::Error::Api(s))) if s.code == 400 => {
                return Err(self.errors.backend(
                    &op,
                    format!(
                        "{}: the pod is not running on a node yet; try again once the sandbox is Ready",
                        lowercase_first(s.message.trim())
                    ),
                ));
            }
            Err(f) => return Err(self.errors.map(&op, f)),
        };
        let errors = self.errors.clone();
        // The kubelet merges stdout and stderr into one log. Read in chunks through the
        // shared splitter, not `lines()`: a line without a newline must not grow unbounded.
        let lines = futures::stream::unfold(
            Some((Box::pin(reader), LineSplitter::default())),
            move |state| {
                let (errors, op) = (errors.clone(), op.clone());
                async move {
                    let (mut reader, mut splitter) = state?;
                    loop {
                        if let Some(line) = splitter.pop() {
                            return Some((Ok(line), Some((reader, splitter))));
                        }
                        let chunk = match reader.fill_buf().await {
                            Ok(c) => c,
                            Err(e) => {
                                let err = errors.map(&op, Fail::Kube(kube::Error::ReadEvents(e)));
                                return Some((Err(err), None));
                            }
                        };
                        if chunk.is_empty() {
                            splitter.finish();
                            let line = splitter.pop()?;
                            return Some((Ok(line), Some((reader, splitter))));
                        }
                        let n = chunk.len();
                        splitter.push(OutputStream::Stdout, chunk);
                        reader.consume_unpin(n);
                    }
                }
            },
        );
        Ok(lines.boxed())
    }
}
