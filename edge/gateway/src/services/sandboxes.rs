//! Sandbox lifecycle over the active compute driver.
//!
//! The gateway keeps the record (name, spec, what the user wants: running or stopped); the
//! runtime keeps the workload; the phase users see is derived on every read from both plus
//! the supervisor session, so it cannot go stale:
//!
//! ```text
//! wanted running: workload Running + session live  -> Ready
//!                 workload Running, no session yet -> Provisioning ("waiting for the supervisor")
//!                 workload exited / missing / bad  -> Error (with the reason)
//! wanted stopped: workload Stopped                 -> Stopped
//!                 workload still running           -> Stopping
//! ```
//!
//! At create the gateway mints the sandbox's own credential from its CA and hands it to the
//! workload with the callback endpoint; the supervisor inside dials back with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use openshell_drivers::credentials::{self, Credentials};
use openshell_drivers::{ComputeDriver, SandboxId, SandboxName, SandboxSpec, WorkloadState};
use openshell_proto::{
    CreateSandboxRequest, ObjectMeta, Sandbox, SandboxPhase, SandboxSpec as WireSpec, SandboxStatus,
};
use openshell_store::{LabelSelector, NewObject, ObjectKind, Precondition, Store, StoredObject};
use prost::Message;

use crate::GatewayError;
use crate::auth::Caller;
use crate::authz::Action;
use crate::services::owners;
use crate::sessions::SessionRegistry;

pub(crate) const KIND: ObjectKind = ObjectKind::SANDBOX;

/// Where the supervisor's main process is in the image built by scripts/build-sandbox-image.
const SUPERVISOR: &str = "/usr/local/bin/openshell-sandbox";

/// What a sandbox record stores (prost-encoded).
#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "2")]
    spec: Option<WireSpec>,
    /// True while the user wants it running (create, start); false after stop.
    #[prost(bool, tag = "3")]
    running: bool,
    /// OpenSSH public key line of the sandbox's SSH host key, generated at create. The
    /// private half goes only to the workload; a supervisor presenting another key is refused.
    #[prost(string, tag = "4")]
    ssh_host_key: String,
}

/// A fresh ed25519 SSH host key: (private key in OpenSSH PEM, public key line).
fn new_host_key() -> Result<(String, String), GatewayError> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| GatewayError::Internal("no randomness for an SSH host key".into()))?;
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let key = ssh_key::PrivateKey::from(pair);
    let pem = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| GatewayError::Internal(format!("cannot encode an SSH host key: {e}")))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| GatewayError::Internal(format!("cannot encode an SSH host key: {e}")))?;
    Ok((pem.to_string(), public))
}

/// Where a user's tunnel to a sandbox goes: its id and live supervisor session.
pub struct Reachable {
    pub id: String,
    pub session: crate::sessions::Session,
}

/// Mints per-sandbox credentials from the gateway's CA, and renews them.
pub struct Minter {
    pub pki_dir: std::path::PathBuf,
    /// Lifetime of each credential (`--sandbox-credential-validity`).
    pub validity: openshell_pki::Duration,
}

/// A renewed sandbox credential.
pub struct Renewed {
    pub cert_pem: String,
    pub ca_pem: String,
    pub serial: String,
    pub not_after_ms: i64,
}

impl Minter {
    async fn mint(&self, sandbox_id: &str) -> Result<(String, String, String), GatewayError> {
        let dir = openshell_pki::PkiDir::new(&self.pki_dir);
        let id = sandbox_id.to_string();
        let validity = self.validity;
        tokio::task::spawn_blocking(move || {
            let ca_pem = openshell_pki::fs::read_public(&dir.ca_cert_path())?;
            let mut ca = openshell_pki::Ca::load(&dir)
                .map_err(|e| GatewayError::Tls(format!("cannot mint a sandbox credential: {e}")))?;
            let (cert, key, _serial) = ca
                .mint_sandbox_credential(&id, validity)
                .map_err(|e| GatewayError::Tls(format!("cannot mint a sandbox credential: {e}")))?;
            Ok((String::from_utf8_lossy(&ca_pem).into_owned(), cert, key))
        })
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?
    }

    /// A new certificate for sandbox `sandbox_id`'s new key (`csr_pem`), from the current CA.
    pub async fn renew(&self, sandbox_id: &str, csr_pem: &str) -> Result<Renewed, GatewayError> {
        let dir = openshell_pki::PkiDir::new(&self.pki_dir);
        let id = sandbox_id.to_string();
        let csr = csr_pem.to_string();
        let validity = self.validity;
        tokio::task::spawn_blocking(move || {
            let ca_pem = openshell_pki::fs::read_public(&dir.ca_cert_path())?;
            let mut ca = openshell_pki::Ca::load(&dir).map_err(|e| {
                GatewayError::Tls(format!("cannot renew a sandbox credential: {e}"))
            })?;
            let (cert_pem, serial) = ca.sign_sandbox_csr(&id, &csr, validity).map_err(|e| {
                GatewayError::InvalidArgument(format!("cannot renew the credential: {e}"))
            })?;
            // What leaf certificates get: now plus the validity (to the second).
            let not_after_ms = crate::now_ms() + (validity.as_secs() as i64) * 1000;
            Ok(Renewed {
                cert_pem,
                ca_pem: String::from_utf8_lossy(&ca_pem).into_owned(),
                serial: serial.to_string(),
                not_after_ms,
            })
        })
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?
    }

    /// Hex SHA-256 of the DER of the CA that issues sandbox credentials now; empty when it
    /// cannot be read. A supervisor holding another CA's credential renews it.
    pub fn issuing_ca_sha256(&self) -> String {
        let path = openshell_pki::PkiDir::new(&self.pki_dir).ca_cert_path();
        std::fs::read(&path)
            .ok()
            .and_then(|pem| credentials::ca_fingerprint(&pem))
            .unwrap_or_default()
    }
}

/// Everything the sandbox RPCs use.
pub struct Sandboxes {
    pub store: Arc<dyn Store>,
    pub driver: Option<Arc<dyn ComputeDriver>>,
    pub sessions: Arc<dyn SessionRegistry>,
    pub minter: Option<Minter>,
    /// Image used when the request names none.
    pub default_image: String,
    /// The endpoint supervisors dial (`https://host.docker.internal:PORT`), filled once the
    /// listener is bound.
    pub callback: Arc<std::sync::OnceLock<String>>,
    /// Why no sandbox can dial `callback`, when the gateway knows it at start (it listens
    /// on loopback and the runtime's containers cannot reach the host's loopback). Creates
    /// and starts then fail at once, naming the fix, instead of waiting out
    /// `ready_timeout` for a supervisor that can never connect.
    pub unreachable: Arc<std::sync::OnceLock<String>>,
    /// A sandbox Provisioning for longer than this (since its create or start, or since
    /// this gateway started) is shown as Error with the driver's last output
    /// (`--ready-timeout`).
    pub ready_timeout: std::time::Duration,
    /// When this gateway started (ms since the epoch): supervisors of sandboxes adopted
    /// at start get the full timeout to reconnect.
    pub started_ms: i64,
}

/// The start of the reason given to a sandbox whose supervisor never connected.
const NOT_READY: &str = "the supervisor did not connect within";

fn decode(obj: &StoredObject) -> Result<Record, GatewayError> {
    Record::decode(obj.payload.as_slice()).map_err(|e| {
        GatewayError::Internal(format!("sandbox record '{}' is unreadable: {e}", obj.name))
    })
}

/// The sandboxes `caller` lists or watches: `selector` narrowed to its own, or every
/// owner's with `all` (for those who may read them).
fn scope(
    caller: &Caller,
    selector: HashMap<String, String>,
    all: bool,
) -> Result<LabelSelector, GatewayError> {
    owners::scope(
        caller,
        selector.into_iter().collect(),
        all,
        Action::ReadAllSandboxes,
    )
}

fn phase_of(
    running: bool,
    workload: Option<&WorkloadState>,
    session: bool,
) -> (SandboxPhase, String) {
    use SandboxPhase as P;
    match (running, workload) {
        (_, None) => (P::Error, "the compute runtime cannot be reached".into()),
        (true, Some(WorkloadState::Running)) if session => (P::Ready, String::new()),
        (true, Some(WorkloadState::Running | WorkloadState::Creating)) => (
            P::Provisioning,
            "waiting for the supervisor to connect".into(),
        ),
        (true, Some(WorkloadState::Stopped { exit_code })) => (
            P::Error,
            format!("the main process exited with code {exit_code}"),
        ),
        (false, Some(WorkloadState::Stopped { .. })) => (P::Stopped, String::new()),
        (false, Some(WorkloadState::Running | WorkloadState::Creating)) => {
            (P::Stopping, String::new())
        }
        (_, Some(WorkloadState::Missing)) => (
            P::Error,
            "the workload is gone from the runtime: delete the sandbox and create it again".into(),
        ),
        (_, Some(WorkloadState::Error(e))) => (P::Error, e.clone()),
    }
}

impl Sandboxes {
    fn driver(&self) -> Result<&Arc<dyn ComputeDriver>, GatewayError> {
        self.driver.as_ref().ok_or_else(|| {
            GatewayError::Precondition(
                "no compute driver is active on this gateway: start Docker or Podman, or choose one with --drivers".into(),
            )
        })
    }

    fn view(
        &self,
        obj: &StoredObject,
        workload: Option<&WorkloadState>,
        runtime_id: &str,
    ) -> Result<Sandbox, GatewayError> {
        let rec = decode(obj)?;
        let session = self.sessions.get(&rec.id);
        let (mut phase, mut reason) = phase_of(rec.running, workload, session.is_some());
        let since = obj.updated_at_ms.max(self.started_ms);
        if phase == SandboxPhase::Provisioning
            && crate::now_ms() - since > self.ready_timeout.as_millis() as i64
        {
            phase = SandboxPhase::Error;
            reason = format!(
                "{NOT_READY} {} s: check that the sandbox can reach the gateway's callback \
                 endpoint ({})",
                self.ready_timeout.as_secs(),
                self.callback.get().map(String::as_str).unwrap_or("unknown")
            );
        }
        Ok(Sandbox {
            meta: Some(ObjectMeta {
                id: rec.id.clone(),
                name: obj.name.clone(),
                labels: owners::user_labels(obj),
                owner: owners::owner_of(obj).to_string(),
                resource_version: obj.resource_version,
                created_at_ms: obj.created_at_ms,
                updated_at_ms: obj.updated_at_ms,
            }),
            spec: rec.spec,
            status: Some(SandboxStatus {
                phase: phase as i32,
                reason,
                message: workload.map(|w| w.to_string()).unwrap_or_default(),
                driver: String::new(),
                workload_id: runtime_id.to_string(),
                supervisor_connected: session.is_some(),
                ssh_host_key: if rec.ssh_host_key.is_empty() {
                    session.map(|s| s.ssh_host_key).unwrap_or_default()
                } else {
                    rec.ssh_host_key.clone()
                },
                exit_code: match workload {
                    Some(WorkloadState::Stopped { exit_code }) => *exit_code as i32,
                    _ => 0,
                },
            }),
        })
    }

    async fn load(&self, name: &str) -> Result<StoredObject, GatewayError> {
        self.store
            .get(&KIND, name)
            .await?
            .ok_or_else(|| GatewayError::NotFound(format!("sandbox '{name}'")))
    }

    /// The record of sandbox `name` if `caller` may do `action` on it; someone else's
    /// sandbox is "not found", exactly like a missing one.
    async fn load_for(
        &self,
        caller: &Caller,
        action: Action,
        name: &str,
    ) -> Result<StoredObject, GatewayError> {
        let obj = self.load(name).await?;
        owners::check(caller, action, &obj, || format!("sandbox '{name}'"))?;
        Ok(obj)
    }

    /// Checks that `caller` may attach each named provider (its own, or one an admin
    /// shared); another user's provider is "not found", like a missing one.
    async fn check_providers(&self, caller: &Caller, names: &[String]) -> Result<(), GatewayError> {
        for p in names {
            let obj = self
                .store
                .get(&crate::services::providers::KIND, p)
                .await?
                .ok_or_else(|| GatewayError::NotFound(format!("provider '{p}'")))?;
            owners::check(caller, Action::UseProvider, &obj, || {
                format!("provider '{p}'")
            })?;
        }
        Ok(())
    }

    async fn observe(&self, obj: &StoredObject) -> Result<Sandbox, GatewayError> {
        let rec = decode(obj)?;
        let id = SandboxId::new(rec.id.clone())?;
        match self.driver()?.get(&id).await {
            Ok(w) => {
                let mut view = self.view(obj, Some(&w.state), &w.runtime_id)?;
                if let Some(status) = view.status.as_mut()
                    && status.reason.starts_with(NOT_READY)
                {
                    status.reason.push_str(&self.output_tail(&id).await);
                }
                Ok(view)
            }
            Err(openshell_drivers::DriverError::NotFound { .. }) => {
                self.view(obj, Some(&WorkloadState::Missing), "")
            }
            Err(e) if e.is_transient() => self.view(obj, None, ""),
            Err(e) => Err(e.into()),
        }
    }

    /// The workload's last lines of output, as a diagnostic appended to a reason. Only the
    /// tail is read from the runtime, and each line is shortened: whatever the workload
    /// printed, a status stays small.
    async fn output_tail(&self, id: &SandboxId) -> String {
        use futures::StreamExt;
        /// Lines shown, and bytes kept of each.
        const LINES: usize = 5;
        const LINE_BYTES: usize = 512;
        let Ok(driver) = self.driver() else {
            return String::new();
        };
        let opts = openshell_drivers::LogOptions {
            follow: false,
            tail: Some(LINES),
        };
        let Ok(stream) = driver.logs(id, opts).await else {
            return String::new();
        };
        // A ring as well: a runtime may count lines differently (the kubelet counts whole
        // lines, we count pieces) and hand out more than asked.
        let mut stream = std::pin::pin!(stream);
        let mut tail = std::collections::VecDeque::with_capacity(LINES + 1);
        while let Some(item) = stream.next().await {
            let Ok(l) = item else { break };
            let mut l = l.line;
            if l.len() > LINE_BYTES {
                let mut end = LINE_BYTES;
                while !l.is_char_boundary(end) {
                    end -= 1;
                }
                l.truncate(end);
                l.push('…');
            }
            tail.push_back(l);
            if tail.len() > LINES {
                tail.pop_front();
            }
        }
        if tail.is_empty() {
            return String::new();
        }
        let tail: Vec<String> = tail.into();
        format!("; its last output: {}", tail.join(" | "))
    }

    /// Refuses when no supervisor could ever connect back (see [`Sandboxes::unreachable`]).
    fn check_reachable(&self) -> Result<(), GatewayError> {
        match self.unreachable.get() {
            Some(why) => Err(GatewayError::Precondition(why.clone())),
            None => Ok(()),
        }
    }

    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateSandboxRequest,
    ) -> Result<Sandbox, GatewayError> {
        owners::check_user_labels(req.labels.keys())?;
        let driver = self.driver()?.clone();
        let minter = self.minter.as_ref().ok_or_else(|| {
            GatewayError::Precondition(
                "sandboxes need the gateway's CA to mint their credentials: run the gateway with TLS from an `openshell pki init` directory".into(),
            )
        })?;
        self.check_reachable()?;
        let callback = self.callback.get().cloned().ok_or_else(|| {
            GatewayError::Internal("the callback endpoint is not known yet".into())
        })?;
        let name = if req.name.is_empty() {
            format!(
                "sandbox-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        } else {
            req.name.clone()
        };
        let name = SandboxName::new(name)?;
        let mut spec = req.spec.unwrap_or_default();
        self.check_providers(caller, &spec.providers).await?;
        if spec.image.is_empty() {
            spec.image = self.default_image.clone();
        }
        if spec.cpu < 0.0 || spec.memory_bytes < 0 {
            return Err(GatewayError::InvalidArgument(
                "cpu and memory must not be negative".into(),
            ));
        }
        let id = SandboxId::generate();
        let (host_key_pem, host_key) = new_host_key()?;
        let record = Record {
            id: id.as_str().to_string(),
            spec: Some(spec.clone()),
            running: true,
            ssh_host_key: host_key,
        };
        let obj = self
            .store
            .create(
                NewObject::new(KIND, name.as_str(), record.encode_to_vec())
                    .labels(owners::labels_for_new(caller, req.labels.clone())),
            )
            .await?;
        let result = async {
            let (ca, cert, key) = minter.mint(id.as_str()).await?;
            let mut env: BTreeMap<String, String> = spec.env.clone().into_iter().collect();
            env.insert("OPENSHELL_ENDPOINT".into(), callback);
            env.insert("OPENSHELL_SANDBOX_ID".into(), id.as_str().to_string());
            env.insert("OPENSHELL_SANDBOX".into(), name.as_str().to_string());
            let mut credentials = Credentials::default();
            credentials.insert(credentials::CA_FILE, ca)?;
            credentials.insert(credentials::CERT_FILE, cert)?;
            credentials.insert(credentials::KEY_FILE, key)?;
            credentials.insert(credentials::SSH_HOST_KEY_FILE, host_key_pem)?;
            let mut command = vec![SUPERVISOR.to_string()];
            if !spec.command.is_empty() {
                command.push("--".into());
                command.extend(spec.command.iter().cloned());
            }
            let driver_spec = SandboxSpec {
                image: spec.image.clone(),
                cpu: (spec.cpu > 0.0).then_some(spec.cpu),
                memory: (spec.memory_bytes > 0).then_some(spec.memory_bytes as u64),
                env,
                labels: req.labels.clone().into_iter().collect(),
                command,
                credentials,
            };
            driver
                .create(&id, &name, &driver_spec)
                .await
                .map_err(GatewayError::from)
        }
        .await;
        match result {
            Ok(w) => {
                tracing::info!(sandbox = %name, id = %id, "sandbox created");
                self.view(&obj, Some(&w.state), &w.runtime_id)
            }
            Err(e) => {
                // Nothing half-created: the driver removed its workload; drop the record.
                let _ = self
                    .store
                    .delete(&KIND, name.as_str(), Precondition::Unconditional)
                    .await;
                Err(e)
            }
        }
    }

    /// The sandbox a user's tunnel should reach, if it can be reached now; otherwise why not,
    /// with what to do about it.
    pub async fn reachable(&self, caller: &Caller, name: &str) -> Result<Reachable, GatewayError> {
        let obj = self.load_for(caller, Action::ReachSandbox, name).await?;
        let rec = decode(&obj)?;
        if let Some(session) = self.sessions.get(&rec.id) {
            return Ok(Reachable {
                id: rec.id,
                session,
            });
        }
        Err(GatewayError::Precondition(if rec.running {
            format!(
                "sandbox '{name}' is not ready (its supervisor is not connected): wait until `openshell sandbox get {name}` shows Ready"
            )
        } else {
            format!("sandbox '{name}' is stopped: start it with `openshell sandbox start {name}`")
        }))
    }

    /// The SSH host key pinned for sandbox `id` at create (empty for sandboxes created before
    /// keys were pinned).
    pub async fn pinned_host_key(&self, id: &str) -> Result<String, GatewayError> {
        let objs = self
            .store
            .list(&KIND, &LabelSelector::everything(), None, 0)
            .await?;
        for obj in &objs {
            let rec = decode(obj)?;
            if rec.id == id {
                return Ok(rec.ssh_host_key);
            }
        }
        Err(GatewayError::NotFound(format!("sandbox with id '{id}'")))
    }

    pub async fn get(&self, caller: &Caller, name: &str) -> Result<Sandbox, GatewayError> {
        let obj = self.load_for(caller, Action::ReadSandbox, name).await?;
        self.observe(&obj).await
    }

    /// The caller's sandboxes matching `selector`, or every owner's with `all` (admins and
    /// viewers).
    pub async fn list(
        &self,
        caller: &Caller,
        selector: HashMap<String, String>,
        limit: u32,
        offset: u32,
        all: bool,
    ) -> Result<Vec<Sandbox>, GatewayError> {
        let selector = scope(caller, selector, all)?;
        self.list_selected(&selector, limit, offset).await
    }

    async fn list_selected(
        &self,
        selector: &LabelSelector,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Sandbox>, GatewayError> {
        let objs = self
            .store
            .list(
                &KIND,
                selector,
                (limit > 0).then_some(limit as usize),
                offset as usize,
            )
            .await?;
        let workloads: Option<HashMap<String, (WorkloadState, String)>> = match &self.driver {
            Some(d) => d.list().await.ok().map(|ws| {
                ws.into_iter()
                    .map(|w| (w.id.as_str().to_string(), (w.state, w.runtime_id)))
                    .collect()
            }),
            None => None,
        };
        objs.iter()
            .map(|obj| {
                let rec = decode(obj)?;
                match &workloads {
                    Some(map) => match map.get(&rec.id) {
                        Some((state, rid)) => self.view(obj, Some(state), rid),
                        None => self.view(obj, Some(&WorkloadState::Missing), ""),
                    },
                    None => self.view(obj, None, ""),
                }
            })
            .collect()
    }

    async fn set_running(
        &self,
        obj: &StoredObject,
        running: bool,
    ) -> Result<StoredObject, GatewayError> {
        let mut rec = decode(obj)?;
        rec.running = running;
        Ok(self
            .store
            .update(
                &KIND,
                &obj.name,
                Precondition::ResourceVersion(obj.resource_version),
                rec.encode_to_vec(),
                obj.labels.clone(),
            )
            .await?)
    }

    pub async fn stop(&self, caller: &Caller, name: &str) -> Result<Sandbox, GatewayError> {
        // The runtime first: if it cannot stop the workload, the record still says what is
        // true (running) and the user gets the runtime's error.
        let obj = self.load_for(caller, Action::StopSandbox, name).await?;
        let id = SandboxId::new(decode(&obj)?.id)?;
        let w = self.driver()?.stop(&id).await?;
        let obj = self.set_running(&obj, false).await?;
        self.forget_session(&id);
        self.view(&obj, Some(&w.state), &w.runtime_id)
    }

    pub async fn start(&self, caller: &Caller, name: &str) -> Result<Sandbox, GatewayError> {
        let obj = self.load_for(caller, Action::StartSandbox, name).await?;
        self.check_reachable()?;
        let id = SandboxId::new(decode(&obj)?.id)?;
        self.forget_session(&id);
        let driver = self.driver()?;
        self.refresh_credential(driver.as_ref(), &id).await?;
        let w = driver.start(&id).await?;
        let obj = self.set_running(&obj, true).await?;
        self.view(&obj, Some(&w.state), &w.runtime_id)
    }

    /// Gives a sandbox about to start a freshly minted TLS credential: one stopped for
    /// longer than its credential lives would otherwise come back with an expired one (a
    /// running supervisor renews its own). The SSH host key stays. Without the CA key (no
    /// minter) the delivered credential is kept.
    async fn refresh_credential(
        &self,
        driver: &dyn ComputeDriver,
        id: &SandboxId,
    ) -> Result<(), GatewayError> {
        let Some(minter) = &self.minter else {
            return Ok(());
        };
        let (ca, cert, key) = minter.mint(id.as_str()).await?;
        let mut fresh = Credentials::default();
        fresh.insert(credentials::CA_FILE, ca)?;
        fresh.insert(credentials::CERT_FILE, cert)?;
        fresh.insert(credentials::KEY_FILE, key)?;
        driver.refresh_credentials(id, &fresh).await?;
        Ok(())
    }

    /// Drops the sandbox's session: a stopped workload has no supervisor. A VM's
    /// supervisor dies with its VM without closing its connection, so its session would
    /// otherwise look live until the QUIC idle timeout, and a restart would read as Ready
    /// before the new supervisor connects.
    fn forget_session(&self, id: &SandboxId) {
        if let Some(s) = self.sessions.get(id.as_str()) {
            self.sessions.unregister(id.as_str(), &s.id);
        }
    }

    /// Brings workloads in line with records after a gateway start: restarts sandboxes that
    /// should run but whose workload stopped while the gateway was away, and removes
    /// workloads of this gateway that have no record (leaks from an interrupted create or
    /// delete). Running workloads are adopted as they are; their supervisors reconnect, and
    /// records whose workload is gone show as Error when read.
    pub async fn reconcile(&self) -> Result<(), GatewayError> {
        let Some(driver) = &self.driver else {
            return Ok(());
        };
        let records = self
            .store
            .list(&KIND, &LabelSelector::everything(), None, 0)
            .await?;
        let workloads = driver.list().await?;
        let (seen, mut removed) = (workloads.len(), 0);
        let mut wanted: HashMap<String, (String, bool)> = HashMap::new();
        for obj in &records {
            let rec = decode(obj)?;
            wanted.insert(rec.id, (obj.name.clone(), rec.running));
        }
        for w in workloads {
            match wanted.get(w.id.as_str()) {
                None => {
                    tracing::warn!(id = %w.id, name = %w.name, "removing a workload with no sandbox record");
                    match driver.delete(&w.id).await {
                        Ok(()) => removed += 1,
                        Err(e) => {
                            tracing::warn!(id = %w.id, error = %e, "cannot remove a leaked workload")
                        }
                    }
                }
                Some((name, true)) if matches!(w.state, WorkloadState::Stopped { .. }) => {
                    tracing::info!(sandbox = %name, "restarting a sandbox that stopped while the gateway was away");
                    if let Err(e) = self.refresh_credential(driver.as_ref(), &w.id).await {
                        tracing::warn!(sandbox = %name, error = %e, "cannot renew the credential of a sandbox to restart");
                    }
                    if let Err(e) = driver.start(&w.id).await {
                        tracing::warn!(sandbox = %name, error = %e, "cannot restart the sandbox");
                    }
                }
                Some(_) => {}
            }
        }
        tracing::info!(
            workloads = seen,
            removed,
            "reconciled sandboxes with the runtime"
        );
        Ok(())
    }

    /// A stream of status changes: every matching sandbox as ADDED, then MODIFIED whenever
    /// its phase, reason or supervisor connection changes, and DELETED when it goes. Status is
    /// derived (record + workload + session), so it is re-derived on a short interval and
    /// diffed; the stream ends when the client goes away.
    ///
    /// Users watch their own sandboxes; admins and viewers watch everyone's with `all`, and a
    /// named sandbox whoever owns it.
    pub fn watch(
        self: &Arc<Self>,
        caller: &Caller,
        name: String,
        selector: HashMap<String, String>,
        all: bool,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<openshell_proto::SandboxEvent, GatewayError>>,
        GatewayError,
    > {
        use openshell_proto::sandbox_event::Kind;
        let all = all || (!name.is_empty() && caller.may(Action::ReadAllSandboxes, None).is_ok());
        let selector = scope(caller, selector, all)?;
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut known: HashMap<String, (i32, String, bool)> = HashMap::new();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                // A client that went away must not leave this loop polling the runtime
                // forever: a send would notice only when something changes.
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tx.closed() => {
                        tracing::debug!("watch ended: its client went away");
                        return;
                    }
                }
                let current = match this.list_selected(&selector, 0, 0).await {
                    Ok(list) => list,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let mut seen = std::collections::HashSet::new();
                for sb in current {
                    let meta = sb.meta.clone().unwrap_or_default();
                    if !name.is_empty() && meta.name != name {
                        continue;
                    }
                    let st = sb.status.clone().unwrap_or_default();
                    let key = (st.phase, st.reason.clone(), st.supervisor_connected);
                    seen.insert(meta.name.clone());
                    let kind = match known.insert(meta.name.clone(), key.clone()) {
                        None => Kind::Added,
                        Some(old) if old != key => Kind::Modified,
                        Some(_) => continue,
                    };
                    let event = openshell_proto::SandboxEvent {
                        kind: kind as i32,
                        sandbox: Some(sb),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                let gone: Vec<String> = known
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for g in gone {
                    known.remove(&g);
                    let event = openshell_proto::SandboxEvent {
                        kind: Kind::Deleted as i32,
                        sandbox: Some(Sandbox {
                            meta: Some(ObjectMeta {
                                name: g,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(futures::StreamExt::boxed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    /// The workload's output (stdout and stderr), following it when asked.
    pub async fn logs(
        &self,
        caller: &Caller,
        name: &str,
        follow: bool,
        tail: u32,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<openshell_proto::LogLine, GatewayError>>,
        GatewayError,
    > {
        use futures::StreamExt;
        let obj = self.load_for(caller, Action::ReadSandbox, name).await?;
        let id = SandboxId::new(decode(&obj)?.id)?;
        // The runtime reads the tail (not the whole log), and lines stream through as they
        // are read: nothing here grows with what the workload printed.
        let opts = openshell_drivers::LogOptions {
            follow,
            tail: (tail > 0).then_some(tail as usize),
        };
        let stream = self.driver()?.logs(&id, opts).await?;
        let lines = stream.map(|r| {
            r.map(|l| openshell_proto::LogLine {
                timestamp_ms: crate::now_ms(),
                source: match l.stream {
                    openshell_drivers::OutputStream::Stdout => "stdout".into(),
                    openshell_drivers::OutputStream::Stderr => "stderr".into(),
                },
                line: l.line,
            })
            .map_err(GatewayError::from)
        });
        Ok(lines.boxed())
    }

    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<(), GatewayError> {
        let obj = self.load_for(caller, Action::DeleteSandbox, name).await?;
        let id = SandboxId::new(decode(&obj)?.id)?;
        self.driver()?.delete(&id).await?;
        self.store
            .delete(&KIND, name, Precondition::Unconditional)
            .await?;
        tracing::info!(sandbox = %name, "sandbox deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fake driver, counting how often the runtime is listed.
    struct CountingDriver(
        openshell_drivers::FakeDriver,
        std::sync::atomic::AtomicUsize,
    );

    #[async_trait::async_trait]
    impl ComputeDriver for CountingDriver {
        async fn info(&self) -> openshell_drivers::DriverInfo {
            self.0.info().await
        }
        async fn create(
            &self,
            id: &SandboxId,
            name: &SandboxName,
            spec: &SandboxSpec,
        ) -> Result<openshell_drivers::WorkloadStatus, openshell_drivers::DriverError> {
            self.0.create(id, name, spec).await
        }
        async fn refresh_credentials(
            &self,
            id: &SandboxId,
            credentials: &openshell_drivers::Credentials,
        ) -> Result<(), openshell_drivers::DriverError> {
            self.0.refresh_credentials(id, credentials).await
        }
        async fn start(
            &self,
            id: &SandboxId,
        ) -> Result<openshell_drivers::WorkloadStatus, openshell_drivers::DriverError> {
            self.0.start(id).await
        }
        async fn stop(
            &self,
            id: &SandboxId,
        ) -> Result<openshell_drivers::WorkloadStatus, openshell_drivers::DriverError> {
            self.0.stop(id).await
        }
        async fn delete(&self, id: &SandboxId) -> Result<(), openshell_drivers::DriverError> {
            self.0.delete(id).await
        }
        async fn get(
            &self,
            id: &SandboxId,
        ) -> Result<openshell_drivers::WorkloadStatus, openshell_drivers::DriverError> {
            self.0.get(id).await
        }
        async fn list(
            &self,
        ) -> Result<Vec<openshell_drivers::WorkloadStatus>, openshell_drivers::DriverError>
        {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.list().await
        }
        async fn watch(
            &self,
        ) -> Result<openshell_drivers::EventStream, openshell_drivers::DriverError> {
            self.0.watch().await
        }
        async fn logs(
            &self,
            id: &SandboxId,
            opts: openshell_drivers::LogOptions,
        ) -> Result<openshell_drivers::LogStream, openshell_drivers::DriverError> {
            self.0.logs(id, opts).await
        }
    }

    #[tokio::test]
    async fn a_watch_stops_polling_when_its_client_goes_away() {
        use std::sync::atomic::Ordering::SeqCst;
        let driver = Arc::new(CountingDriver(
            openshell_drivers::FakeDriver::new(
                openshell_drivers::GatewayId::new("gw-test").unwrap(),
                &[],
            ),
            Default::default(),
        ));
        let sandboxes = Arc::new(Sandboxes {
            store: Arc::new(openshell_store::MemoryStore::default()),
            driver: Some(driver.clone()),
            sessions: Arc::new(crate::sessions::LocalSessions::default()),
            minter: None,
            default_image: "img".into(),
            callback: Default::default(),
            unreachable: Default::default(),
            ready_timeout: std::time::Duration::from_secs(60),
            started_ms: 0,
        });
        let caller = crate::auth::test_caller("alice", &[crate::authz::Role::User]);
        let stream = sandboxes
            .watch(&caller, String::new(), HashMap::new(), false)
            .unwrap();
        let polls = || driver.1.load(SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        assert!(polls() >= 2, "the watch did not poll: {}", polls());
        drop(stream);
        // The task notices within one tick; after that the count must stand still.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let after = polls();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(polls(), after, "a watch without a client kept polling");
    }

    #[test]
    fn ready_only_with_a_live_session() {
        let running = WorkloadState::Running;
        assert_eq!(phase_of(true, Some(&running), true).0, SandboxPhase::Ready);
        assert_eq!(
            phase_of(true, Some(&running), false).0,
            SandboxPhase::Provisioning
        );
        let exited = WorkloadState::Stopped { exit_code: 3 };
        let (p, why) = phase_of(true, Some(&exited), false);
        assert_eq!(p, SandboxPhase::Error);
        assert!(why.contains("code 3"));
        assert_eq!(
            phase_of(false, Some(&exited), false).0,
            SandboxPhase::Stopped
        );
        assert_eq!(phase_of(true, None, true).0, SandboxPhase::Error);
    }
}
