//! The MicroVM compute backend: each sandbox is a QEMU `-M microvm` guest.
//!
//! Owns: turning a sandbox into a VM (kernel from Debian's `linux-image-cloud-amd64`, root
//! filesystem made from the sandbox image, the supervisor as the main process), and reading
//! VMs back from its state directory. Does not own: the kernel artifacts (made by
//! `scripts/build-vm-kernel`), images (exported from the local Docker or Podman store,
//! never pulled), sandbox records, phases or restarts (the gateway's).
//!
//! # Layout and lifecycle
//!
//! ```text
//!   <state-dir>/images/<image id>/rootfs/     the image, exported once per image id
//!   <state-dir>/sandboxes/<sandbox id>/       0700, one per sandbox
//!       sandbox.json   name, gateway, image, limits, command (no secrets)
//!       env.json       0600: the environment (no secrets)
//!       credentials/   0700, files 0600: the sandbox's credential (see openshell_drivers::credentials)
//!       disk.img       ext4 made with `mkfs.ext4 -d` from the image: kept across stop/start
//!       console.log    the serial console (kernel, init, main process), all boots appended
//!       console.sock   the same console as a socket: the driver writes `stop` to it
//!       boot           where in console.log the current boot starts, and when
//!       qemu.pid       written by QEMU (`-pidfile`), removed by it when it exits
//!       stopped        present while the driver has stopped the VM
//!
//!   start: initrd = kernel dir's initrd-base.cpio (busybox, virtio modules)
//!                 + init script + env (0600 inside the initramfs, removed once read)
//!                 + credential (0400), moved by the init onto the guest's /run tmpfs
//!          qemu -M microvm -kernel vmlinuz -initrd ... -drive disk.img
//!               -netdev user,restrict=on,guestfwd=<gateway only> -daemonize
//!   guest: init loads virtio_mmio/blk/net, mounts /dev/vda, sets eth0 10.0.2.15/24 via
//!          10.0.2.2, runs the main process chrooted into the disk, prints its exit code,
//!          powers off.
//! ```
//!
//! The driver keeps nothing in memory: every call reads the state directory and checks the
//! pidfile's process is alive and really is this sandbox's QEMU (`/proc/PID/cmdline`).
//!
//! Credentials never go on the kernel command line (visible in `ps`) nor in the environment:
//! they travel in the per-start initramfs and end up root-only in
//! `/run/openshell/credentials`. The guest's network is QEMU user networking with
//! `restrict=on`: it reaches nothing on the host or beyond but the gateway. The callback
//! endpoint's host is rewritten to 10.0.2.100, which QEMU forwards (one `socat` per
//! connection) to the gateway's real address, and `OPENSHELL_SERVER_NAME` keeps the
//! original host so the gateway's certificate still verifies; the gateway may listen on
//! 127.0.0.1. The forward is TCP only, so the supervisor uses the TCP transport.
//!
//! Limits: `cpu` becomes whole vCPUs (`-smp`, rounded up: 0.5 gets one vCPU, not half a
//! core) and at most the host's CPU count; `memory` is the guest's RAM (`-m`, at least
//! [`MIN_MEMORY`], 512 MiB when unset). The disk is a sparse file of
//! [`VmConfig::disk_size`].
//!
//! KVM is used when `/dev/kvm` is hardware KVM (vmx/svm flags); otherwise TCG, with
//! `tsc_early_khz=` on the kernel command line (microvm has no timer to calibrate the TSC).
//! Stopping a VM asks its init over the serial console to SIGTERM the main process; when
//! that ends the init syncs the disk and powers off. A guest that does not end within the
//! grace period has QEMU terminated (SIGTERM, then SIGKILL): a power cut, after which the
//! ext4 journal and the guest's 1 s writeback interval bound what is lost.

mod cpio;
mod guest;
mod host;
mod image;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use openshell_drivers::{
    ComputeDriver, DriverError, DriverHealth, DriverInfo, EventStream, GatewayId, LineSplitter,
    LogOptions, LogStream, OutputStream, SandboxId, SandboxName, SandboxSpec, WorkloadEvent,
    WorkloadState, WorkloadStatus,
};

pub use guest::Accel;

/// Where `scripts/build-vm-kernel` puts the kernel artifacts by default.
pub const DEFAULT_KERNEL_DIR: &str = "/var/cache/openshell-edge/vm/kernel";
/// The smallest memory a VM gets: the cloud kernel and the init need about 100 MiB.
pub const MIN_MEMORY: u64 = 128 << 20;
const RUNTIME: &str = "vm";
const INIT: &str = include_str!("init.sh");
/// The sandbox directory's copy of the credential (0700, files 0600), for each start's
/// initramfs.
const CREDENTIALS: &str = "credentials";

/// How the driver runs VMs. Every field but `gateway` and `state_dir` has a default.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// The owning gateway, recorded in each sandbox's `sandbox.json`.
    pub gateway: GatewayId,
    /// Per-sandbox directories and the exported images (see the crate docs). The gateway
    /// passes `<gateway state dir>/vm` unless `--vm-state-dir` says otherwise.
    pub state_dir: PathBuf,
    /// `vmlinuz` and `initrd-base.cpio` from `scripts/build-vm-kernel`. Default
    /// [`DEFAULT_KERNEL_DIR`].
    pub kernel_dir: PathBuf,
    /// The QEMU binary. Default `qemu-system-x86_64` from `PATH`.
    pub qemu: PathBuf,
    /// `socat`, which QEMU runs for each connection the guest makes to the gateway (the
    /// guest's only way out, see `guest::GATEWAY_FROM_GUEST`). Default `socat` from `PATH`.
    pub socat: PathBuf,
    /// `docker` or `podman`: the CLI the sandbox image is exported with. Default `docker`.
    pub image_tool: String,
    /// Size of each sandbox's disk. Default 2 GiB; the file is sparse, so unused space
    /// costs nothing, but the guest cannot grow past it.
    pub disk_size: u64,
    /// Memory of a VM whose spec sets none. Default 512 MiB.
    pub default_memory: u64,
    /// A VM whose init has not started the main process by then is reported as Error with
    /// its console tail (a hung kernel). Default 120 s: TCG boots in about 3 s here, but two
    /// cores shared by many VMs are slow.
    pub boot_timeout: Duration,
    /// How long `stop` waits for the guest after asking it to stop, and again for QEMU
    /// after SIGTERM before SIGKILL. Default 5 s.
    pub stop_grace: Duration,
}

impl VmConfig {
    pub fn new(gateway: GatewayId, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            gateway,
            state_dir: state_dir.into(),
            kernel_dir: DEFAULT_KERNEL_DIR.into(),
            qemu: "qemu-system-x86_64".into(),
            socat: "socat".into(),
            image_tool: "docker".into(),
            disk_size: 2 << 30,
            default_memory: 512 << 20,
            boot_timeout: Duration::from_secs(120),
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// What `sandbox.json` holds: the spec without its environment (that is in `env.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Meta {
    id: String,
    name: String,
    gateway: String,
    image: String,
    cpu: Option<f64>,
    memory: Option<u64>,
    labels: BTreeMap<String, String>,
    command: Vec<String>,
    image_env: Vec<String>,
    /// Where the guest's connections to the gateway go on the host (`host:port`) and the
    /// port the guest dials; `None` when the sandbox has no callback endpoint.
    #[serde(default)]
    gateway_forward: Option<(String, u16)>,
}

/// Runs sandboxes as QEMU microVMs. Construction only reads `/proc/cpuinfo` and
/// `/dev/kvm` to pick the accelerator (logged once); missing QEMU or kernel artifacts show
/// up as [`DriverError::RuntimeUnavailable`] on calls and as unhealthy in `info`.
#[derive(Clone)]
pub struct VmDriver {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: VmConfig,
    accel: Accel,
    tsc_khz: u64,
}

impl VmDriver {
    pub fn new(cfg: VmConfig) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let (accel, why) = guest::choose_accel(kvm, &cpuinfo);
        match accel {
            Accel::Kvm => tracing::info!(accel = "kvm", "vm driver: using KVM: {why}"),
            Accel::Tcg => tracing::info!(
                accel = "tcg",
                "vm driver: using TCG (software emulation, slow): {why}"
            ),
        }
        Self {
            inner: Arc::new(Inner {
                tsc_khz: guest::tsc_khz(&cpuinfo),
                cfg,
                accel,
            }),
        }
    }

    /// The accelerator VMs run with.
    pub fn accel(&self) -> Accel {
        self.inner.accel
    }

    /// Stops every running VM of this driver (the gateway calls it when it shuts down, so
    /// no VM outlives it); disks stay, and the gateway restarts the VMs on its next start.
    pub async fn stop_all(&self) {
        let ids = self.inner.ids();
        let stops = ids.iter().map(|id| async move {
            if let Err(e) = self.inner.stop(id).await {
                tracing::warn!(sandbox = %id, error = %e, "cannot stop a VM at shutdown");
            }
        });
        futures::future::join_all(stops).await;
    }
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> DriverError {
    DriverError::Backend {
        runtime: RUNTIME.into(),
        op: format!("{op} ({})", path.display()),
        message: e.to_string(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Inner {
    fn sandboxes(&self) -> PathBuf {
        self.cfg.state_dir.join("sandboxes")
    }

    fn dir(&self, id: &SandboxId) -> PathBuf {
        self.sandboxes().join(id.as_str())
    }

    fn vm_name(id: &SandboxId) -> String {
        format!("openshell-{id}")
    }

    /// Ids of the sandbox directories of this gateway.
    fn ids(&self) -> Vec<SandboxId> {
        let Ok(entries) = std::fs::read_dir(self.sandboxes()) else {
            return Vec::new();
        };
        let mut ids: Vec<SandboxId> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| SandboxId::new(n).ok())
            .filter(|id| self.meta(id).is_ok())
            .collect();
        ids.sort();
        ids
    }

    fn not_found(id: &SandboxId) -> DriverError {
        DriverError::NotFound {
            runtime: RUNTIME.into(),
            id: id.clone(),
        }
    }

    fn meta(&self, id: &SandboxId) -> Result<Meta, DriverError> {
        let path = self.dir(id).join("sandbox.json");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Self::not_found(id));
            }
            Err(e) => return Err(io_err("read", &path, e)),
        };
        let meta: Meta = serde_json::from_slice(&data).map_err(|e| DriverError::Backend {
            runtime: RUNTIME.into(),
            op: format!("read {}", path.display()),
            message: format!("{e}; delete the directory if it was not made by OpenShell"),
        })?;
        if meta.gateway != self.cfg.gateway.as_str() || meta.id != id.as_str() {
            return Err(Self::not_found(id));
        }
        Ok(meta)
    }

    fn pid(&self, id: &SandboxId) -> Option<u32> {
        host::vm_pid(&self.dir(id).join("qemu.pid"), &Self::vm_name(id))
    }

    /// The console output of the current boot, and how long ago it began.
    fn current_boot(&self, id: &SandboxId) -> (String, u64) {
        let dir = self.dir(id);
        let boot = std::fs::read_to_string(dir.join("boot")).unwrap_or_default();
        let mut fields = boot.split_whitespace();
        let offset: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let began: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            host::read_segment(&dir.join("console.log"), offset),
            now_secs().saturating_sub(began),
        )
    }

    fn status(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let meta = self.meta(id)?;
        let dir = self.dir(id);
        let pid = self.pid(id);
        let state = if !dir.join("boot").exists() {
            WorkloadState::Creating
        } else {
            let (console, booting_for) = self.current_boot(id);
            guest::state_of(
                guest::Facts {
                    alive: pid.is_some(),
                    stopped_by_driver: dir.join("stopped").exists(),
                    booting_for,
                    boot_timeout: self.cfg.boot_timeout.as_secs(),
                },
                &console,
            )
        };
        let name = SandboxName::new(meta.name.clone()).map_err(|_| DriverError::Backend {
            runtime: RUNTIME.into(),
            op: format!("read {}", dir.display()),
            message: "its sandbox name is malformed".into(),
        })?;
        Ok(WorkloadStatus {
            id: id.clone(),
            name,
            state,
            runtime_id: match pid {
                Some(pid) => format!("{} (pid {pid})", Self::vm_name(id)),
                None => Self::vm_name(id),
            },
            spec: SandboxSpec {
                image: meta.image,
                cpu: meta.cpu,
                memory: meta.memory,
                // The sandbox's own environment holds its credentials: not echoed back.
                env: meta
                    .image_env
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                labels: meta.labels,
                command: meta.command,
                credentials: Default::default(),
            },
        })
    }

    /// Missing QEMU or kernel artifacts, as the error every call returns.
    fn check_host(&self) -> Result<(), DriverError> {
        let kdir = &self.cfg.kernel_dir;
        for f in ["vmlinuz", "initrd-base.cpio"] {
            if !kdir.join(f).is_file() {
                return Err(DriverError::RuntimeUnavailable {
                    runtime: RUNTIME.into(),
                    endpoint: kdir.display().to_string(),
                    reason: format!("the guest kernel artifact {f} is missing"),
                    hint: format!(
                        "build them with scripts/build-vm-kernel --out {}",
                        kdir.display()
                    ),
                });
            }
        }
        if which(&self.cfg.socat).is_none() {
            return Err(DriverError::RuntimeUnavailable {
                runtime: RUNTIME.into(),
                endpoint: self.cfg.socat.display().to_string(),
                reason: format!(
                    "{} is not installed (it carries the guest's connections to the gateway)",
                    self.cfg.socat.display()
                ),
                hint: "install socat (apt-get install -y socat)".into(),
            });
        }
        if which(&self.cfg.qemu).is_none() {
            return Err(DriverError::RuntimeUnavailable {
                runtime: RUNTIME.into(),
                endpoint: self.cfg.qemu.display().to_string(),
                reason: format!("{} is not installed", self.cfg.qemu.display()),
                hint: "install QEMU (apt-get install -y qemu-system-x86) or pass --vm-qemu".into(),
            });
        }
        Ok(())
    }

    fn validate(&self, spec: &SandboxSpec) -> Result<(u32, u64), DriverError> {
        spec.validate()?;
        let (host_cpus, host_mem) = host::host_limits();
        let cpus = spec.cpu.map(|c| c.ceil() as u32).unwrap_or(1).max(1);
        if cpus > host_cpus {
            return Err(DriverError::InvalidSpec(format!(
                "cpu {} is more than this host's {host_cpus} CPUs: a VM gets whole vCPUs, ask \
                 for at most {host_cpus}",
                spec.cpu.unwrap_or_default()
            )));
        }
        let memory = spec.memory.unwrap_or(self.cfg.default_memory);
        if memory < MIN_MEMORY {
            return Err(DriverError::InvalidSpec(format!(
                "memory {} MiB is too little for a VM: ask for at least {} MiB",
                memory >> 20,
                MIN_MEMORY >> 20
            )));
        }
        if memory > host_mem {
            return Err(DriverError::InvalidSpec(format!(
                "memory {} MiB is more than this host's {} MiB",
                memory >> 20,
                host_mem >> 20
            )));
        }
        Ok((cpus, memory.div_ceil(1 << 20)))
    }

    async fn create(
        &self,
        id: &SandboxId,
        name: &SandboxName,
        spec: &SandboxSpec,
    ) -> Result<WorkloadStatus, DriverError> {
        self.validate(spec)?;
        self.check_host()?;
        if self.dir(id).exists() {
            return Err(DriverError::AlreadyExists {
                what: format!("a VM for sandbox {id}"),
            });
        }
        for other in self.ids() {
            if self.meta(&other).is_ok_and(|m| m.name == name.as_str()) {
                return Err(DriverError::AlreadyExists {
                    what: format!("a VM named {name}"),
                });
            }
        }
        let rootfs = image::rootfs(
            &self.cfg.image_tool,
            &spec.image,
            &self.cfg.state_dir.join("images"),
        )
        .await?;
        let mut command = spec.command.clone();
        if command.is_empty() {
            command = rootfs.cmd.clone();
        }
        command.splice(0..0, rootfs.entrypoint.iter().cloned());
        let mut env: BTreeMap<String, String> = rootfs
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.entry("HOME".into()).or_insert_with(|| "/root".into());
        env.entry("PATH".into()).or_insert_with(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        env.extend(spec.env.clone());
        let mut gateway_forward = None;
        if let Some(url) = env.get("OPENSHELL_ENDPOINT").cloned() {
            let inside = guest::guest_endpoint(&url).ok_or_else(|| {
                DriverError::InvalidSpec(format!(
                    "the callback endpoint {url} cannot be forwarded into a VM: use scheme://HOST:PORT with a host name or IP address"
                ))
            })?;
            env.insert("OPENSHELL_ENDPOINT".into(), inside.url);
            env.entry("OPENSHELL_SERVER_NAME".into())
                .or_insert(inside.server_name);
            // The forward carries TCP only: no QUIC attempt to wait out first.
            env.insert("OPENSHELL_TRANSPORT".into(), "tcp".into());
            gateway_forward = Some((inside.forward, inside.port));
        }
        // Refuse what the init cannot pass before anything is made.
        guest::env_script(&env, &command, 0)?;
        let meta = Meta {
            id: id.to_string(),
            name: name.to_string(),
            gateway: self.cfg.gateway.to_string(),
            image: spec.image.clone(),
            cpu: spec.cpu,
            memory: spec.memory,
            labels: spec.labels.clone(),
            command,
            image_env: rootfs.env.clone(),
            gateway_forward,
        };

        // Everything is made in a hidden directory and renamed into place, so a failed
        // create leaves nothing a list would see.
        let tmp = self.sandboxes().join(format!(".new-{id}"));
        let made = self
            .prepare(&tmp, &meta, &env, &spec.credentials, &rootfs.dir)
            .await;
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let dir = self.dir(id);
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io_err("move the new VM into place", &dir, e));
        }
        match self.boot(id).await {
            Ok(()) => self.status(id),
            Err(e) => {
                self.terminate(id).await;
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn prepare(
        &self,
        tmp: &Path,
        meta: &Meta,
        env: &BTreeMap<String, String>,
        credentials: &openshell_drivers::Credentials,
        rootfs: &Path,
    ) -> Result<(), DriverError> {
        let _ = std::fs::remove_dir_all(tmp);
        host::private_dir(tmp).map_err(|e| io_err("create", tmp, e))?;
        let json = serde_json::to_vec_pretty(meta).unwrap_or_default();
        std::fs::write(tmp.join("sandbox.json"), json)
            .map_err(|e| io_err("write", &tmp.join("sandbox.json"), e))?;
        let env_json = serde_json::to_vec(env).unwrap_or_default();
        host::write_private(&tmp.join("env.json"), &env_json)
            .map_err(|e| io_err("write", &tmp.join("env.json"), e))?;
        let cred_dir = tmp.join(CREDENTIALS);
        host::private_dir(&cred_dir).map_err(|e| io_err("create", &cred_dir, e))?;
        for (name, contents) in credentials.files() {
            host::write_private(&cred_dir.join(name), contents)
                .map_err(|e| io_err("write", &cred_dir.join(name), e))?;
        }
        let disk = tmp.join("disk.img");
        let f = std::fs::File::create(&disk).map_err(|e| io_err("create", &disk, e))?;
        f.set_len(self.cfg.disk_size)
            .map_err(|e| io_err("size", &disk, e))?;
        drop(f);
        host::run_tool(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-L",
                "openshell",
                "-d",
                &rootfs.to_string_lossy(),
                &disk.to_string_lossy(),
            ],
            "make the sandbox disk from the image (mkfs.ext4 -d)",
        )
        .await
        .map_err(|e| match e {
            DriverError::RuntimeUnavailable { reason, .. } => DriverError::RuntimeUnavailable {
                runtime: RUNTIME.into(),
                endpoint: "mkfs.ext4".into(),
                reason,
                hint: "install e2fsprogs (apt-get install -y e2fsprogs)".into(),
            },
            other => other,
        })?;
        Ok(())
    }

    /// Replaces the host copy of the credential the next boot's initramfs carries.
    fn refresh_credentials(
        &self,
        id: &SandboxId,
        credentials: &openshell_drivers::Credentials,
    ) -> Result<(), DriverError> {
        self.meta(id)?;
        let cred_dir = self.dir(id).join(CREDENTIALS);
        host::private_dir(&cred_dir).map_err(|e| io_err("create", &cred_dir, e))?;
        for (name, contents) in credentials.files() {
            host::write_private(&cred_dir.join(name), contents)
                .map_err(|e| io_err("write", &cred_dir.join(name), e))?;
        }
        Ok(())
    }

    /// Starts QEMU for a prepared sandbox directory.
    async fn boot(&self, id: &SandboxId) -> Result<(), DriverError> {
        self.check_host()?;
        let dir = self.dir(id);
        let meta = self.meta(id)?;
        let env_path = dir.join("env.json");
        let env: BTreeMap<String, String> = std::fs::read(&env_path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .ok_or_else(|| DriverError::Backend {
                runtime: RUNTIME.into(),
                op: format!("read {}", env_path.display()),
                message: "it is missing or unreadable: delete the sandbox and create it again"
                    .into(),
            })?;
        let script = guest::env_script(&env, &meta.command, now_secs())?;
        let kdir = &self.cfg.kernel_dir;
        let base = kdir.join("initrd-base.cpio");
        let mut initrd = std::fs::read(&base).map_err(|e| io_err("read", &base, e))?;
        let mut entries = vec![
            cpio::Entry::file("init", 0o755, INIT),
            cpio::Entry::dir("openshell", 0o700),
            cpio::Entry::file("openshell/env", 0o600, script),
            cpio::Entry::dir("openshell/credentials", 0o700),
        ];
        let cred_dir = dir.join(CREDENTIALS);
        for entry in std::fs::read_dir(&cred_dir).map_err(|e| io_err("read", &cred_dir, e))? {
            let entry = entry.map_err(|e| io_err("read", &cred_dir, e))?;
            let path = entry.path();
            let contents = std::fs::read(&path).map_err(|e| io_err("read", &path, e))?;
            entries.push(cpio::Entry::file(
                &format!(
                    "openshell/credentials/{}",
                    entry.file_name().to_string_lossy()
                ),
                0o400,
                contents,
            ));
        }
        initrd.extend(cpio::archive(&entries));
        let initrd_path = dir.join("initrd.cpio");
        host::write_private(&initrd_path, &initrd).map_err(|e| io_err("write", &initrd_path, e))?;
        let console = dir.join("console.log");
        let offset = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
        std::fs::write(dir.join("boot"), format!("{offset} {}\n", now_secs()))
            .map_err(|e| io_err("write", &dir.join("boot"), e))?;
        let _ = std::fs::remove_file(dir.join("stopped"));
        let (cpus, memory_mib) = self.validate(&SandboxSpec {
            cpu: meta.cpu,
            memory: meta.memory,
            ..SandboxSpec::new(meta.image.clone())
        })?;
        let cmdline = guest::kernel_cmdline(self.accel, self.tsc_khz);
        let name = Self::vm_name(id);
        let socket = dir.join("console.sock");
        let _ = std::fs::remove_file(&socket);
        let args = guest::qemu_args(&guest::Launch {
            accel: self.accel,
            cpus,
            memory_mib,
            kernel: &kdir.join("vmlinuz"),
            initrd: &initrd_path,
            disk: &dir.join("disk.img"),
            console: &console,
            console_socket: guest::fits_socket(&socket).then_some(socket.as_path()),
            pidfile: &dir.join("qemu.pid"),
            cmdline: &cmdline,
            name: &name,
            netdev: guest::netdev(
                meta.gateway_forward
                    .as_ref()
                    .map(|(target, port)| (target.as_str(), *port)),
                &self.cfg.socat,
            ),
        });
        let out = tokio::process::Command::new(&self.cfg.qemu)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        // QEMU has copied the initramfs into guest memory (or failed): the credentials need
        // not stay on disk twice.
        let _ = std::fs::remove_file(&initrd_path);
        let out = out.map_err(|e| {
            host::unavailable(
                &self.cfg.qemu.to_string_lossy(),
                &e,
                "install QEMU (apt-get install -y qemu-system-x86) or pass --vm-qemu",
            )
        })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            // Kept in the console log so `get` and `logs` show why the VM is not running.
            let note = format!("openshell-vm: qemu failed to start: {err}\n");
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&console)
                .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
            return Err(DriverError::Backend {
                runtime: RUNTIME.into(),
                op: format!("start the VM of sandbox {id}"),
                message: format!("qemu exited with {}: {err}", out.status),
            });
        }
        tracing::info!(sandbox = %meta.name, id = %id, accel = %self.accel, cpus, memory_mib, "VM started");
        Ok(())
    }

    /// Removes what creates interrupted by a crash left: hidden `.new-*` sandbox and
    /// `.export-*` image directories older than an hour (no create takes that long).
    fn sweep(&self) {
        let dirs = [self.sandboxes(), self.cfg.state_dir.join("images")];
        for entry in dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
        {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if (name.starts_with(".new-") || name.starts_with(".export-")) && stale {
                tracing::warn!(dir = %entry.path().display(), "removing what an interrupted create left");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Stops the sandbox's VM, if it runs: asks the guest init (over the serial console)
    /// to SIGTERM the main process, whose end powers the VM off; after the grace period
    /// QEMU itself gets SIGTERM, then SIGKILL.
    async fn kill(&self, id: &SandboxId) {
        use tokio::io::AsyncWriteExt;
        if self.pid(id).is_none() {
            return;
        }
        let socket = self.dir(id).join("console.sock");
        let asked = match tokio::net::UnixStream::connect(&socket).await {
            Ok(mut s) => s.write_all(b"stop\n").await.is_ok(),
            Err(_) => false,
        };
        if asked {
            let deadline = tokio::time::Instant::now() + self.cfg.stop_grace;
            while self.pid(id).is_some() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.terminate(id).await;
    }

    /// Ends the sandbox's QEMU, if it still runs: SIGTERM, then SIGKILL after the grace.
    async fn terminate(&self, id: &SandboxId) {
        let Some(pid) = self.pid(id) else { return };
        host::signal(pid, "TERM").await;
        let deadline = tokio::time::Instant::now() + self.cfg.stop_grace;
        while self.pid(id).is_some() {
            if tokio::time::Instant::now() >= deadline {
                host::signal(pid, "KILL").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        self.meta(id)?;
        if self.pid(id).is_some() {
            let marker = self.dir(id).join("stopped");
            std::fs::write(&marker, b"").map_err(|e| io_err("write", &marker, e))?;
            self.kill(id).await;
        }
        self.status(id)
    }

    async fn start(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        self.meta(id)?;
        if self.pid(id).is_none() {
            self.boot(id).await?;
        }
        self.status(id)
    }

    async fn delete(&self, id: &SandboxId) -> Result<(), DriverError> {
        let dir = self.dir(id);
        match self.meta(id) {
            Ok(_) => {}
            Err(DriverError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        // Its files go too, so there is nothing to let the guest save.
        self.terminate(id).await;
        std::fs::remove_dir_all(&dir).map_err(|e| io_err("remove", &dir, e))?;
        tracing::info!(id = %id, "VM deleted");
        Ok(())
    }

    fn list(&self) -> Vec<WorkloadStatus> {
        self.sweep();
        let mut out: Vec<WorkloadStatus> = self
            .ids()
            .iter()
            .filter_map(|id| self.status(id).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// `program` as given when it is a path, else looked up in `PATH`.
fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

#[async_trait::async_trait]
impl ComputeDriver for VmDriver {
    async fn info(&self) -> DriverInfo {
        let cfg = &self.inner.cfg;
        let health = match self.inner.check_host() {
            Ok(()) => DriverHealth::Healthy,
            Err(e) => DriverHealth::Unhealthy(e.to_string()),
        };
        let version = match health {
            DriverHealth::Healthy => tokio::process::Command::new(&cfg.qemu)
                .arg("--version")
                .output()
                .await
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .map(|l| format!("{}, accel {}", l.trim(), self.inner.accel))
                }),
            DriverHealth::Unhealthy(_) => None,
        };
        DriverInfo {
            name: RUNTIME.into(),
            endpoint: cfg.state_dir.display().to_string(),
            version,
            health,
        }
    }

    async fn create(
        &self,
        id: &SandboxId,
        name: &SandboxName,
        spec: &SandboxSpec,
    ) -> Result<WorkloadStatus, DriverError> {
        self.inner.create(id, name, spec).await
    }

    async fn refresh_credentials(
        &self,
        id: &SandboxId,
        credentials: &openshell_drivers::Credentials,
    ) -> Result<(), DriverError> {
        self.inner.refresh_credentials(id, credentials)
    }

    async fn start(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        self.inner.start(id).await
    }

    async fn stop(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        self.inner.stop(id).await
    }

    async fn delete(&self, id: &SandboxId) -> Result<(), DriverError> {
        self.inner.delete(id).await
    }

    async fn get(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        self.inner.status(id)
    }

    async fn list(&self) -> Result<Vec<WorkloadStatus>, DriverError> {
        Ok(self.inner.list())
    }

    /// Polls the state directory (there is no runtime to push events) every 250 ms and
    /// reports what changed since the call.
    async fn watch(&self) -> Result<EventStream, DriverError> {
        let inner = self.inner.clone();
        let known: BTreeMap<SandboxId, WorkloadState> =
            inner.list().into_iter().map(|w| (w.id, w.state)).collect();
        let stream = futures::stream::unfold(
            (inner, known, Vec::<WorkloadEvent>::new()),
            |(inner, mut known, mut pending)| async move {
                loop {
                    if let Some(e) = pending.pop() {
                        return Some((Ok(e), (inner, known, pending)));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let now: BTreeMap<SandboxId, WorkloadState> =
                        inner.list().into_iter().map(|w| (w.id, w.state)).collect();
                    for (id, state) in &now {
                        if known.get(id) != Some(state) {
                            pending.push(WorkloadEvent {
                                id: id.clone(),
                                state: state.clone(),
                            });
                        }
                    }
                    for id in known.keys().filter(|id| !now.contains_key(*id)) {
                        pending.push(WorkloadEvent {
                            id: id.clone(),
                            state: WorkloadState::Missing,
                        });
                    }
                    known = now;
                }
            },
        );
        Ok(stream.boxed())
    }

    /// The serial console: kernel messages, the init's lines and the main process's output
    /// (stdout and stderr share the console, so every line is reported as stdout).
    async fn logs(&self, id: &SandboxId, opts: LogOptions) -> Result<LogStream, DriverError> {
        self.inner.meta(id)?;
        let inner = self.inner.clone();
        let path = self.inner.dir(id).join("console.log");
        let id = id.clone();
        let follow = opts.follow;
        // A tail reads only the end of the console, however long it grew.
        let (start, skip) = match opts.tail {
            Some(n) => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || host::tail_start(&p, n))
                    .await
                    .unwrap_or((0, 0))
            }
            None => (0, 0),
        };
        let stream = futures::stream::unfold(
            (start, LineSplitter::default(), skip, false),
            move |(mut pos, mut splitter, mut skip, mut done)| {
                let (inner, path, id) = (inner.clone(), path.clone(), id.clone());
                async move {
                    loop {
                        while let Some(line) = splitter.pop() {
                            if skip > 0 {
                                skip -= 1;
                                continue;
                            }
                            return Some((Ok(line), (pos, splitter, skip, done)));
                        }
                        if done {
                            return None;
                        }
                        // Read the liveness first: a VM that ended has written everything.
                        let alive = follow && inner.pid(&id).is_some();
                        // Bounded reads: what the VM printed is never held whole.
                        let data = host::read_at(&path, pos, host::LOG_CHUNK);
                        pos += data.len() as u64;
                        splitter.push(OutputStream::Stdout, &data);
                        if data.len() == host::LOG_CHUNK {
                            continue;
                        }
                        if !alive {
                            splitter.finish();
                            done = true;
                        } else if splitter.ready() == 0 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            },
        );
        Ok(stream.boxed())
    }

    async fn shutdown(&self) {
        self.stop_all().await;
    }
}
