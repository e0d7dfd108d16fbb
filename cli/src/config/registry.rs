//! The two registry layers on disk and the operations on them.
//!
//! ```text
//! user   $XDG_CONFIG_HOME/openshell/   read-write: active_gateway, gateways/<n>/{metadata.json,
//!                                      mtls/, edge_token, transport.json, last_sandbox}
//! system /etc/openshell/               read-only: active_gateway, gateways/<n>/metadata.json
//! ```
//!
//! A user `metadata.json` shadows a system entry of the same name, even when it is
//! unreadable (so a broken user entry is reported, not silently replaced).

use std::path::{Path, PathBuf};

use super::endpoint::Endpoint;
use super::env::Env;
use super::metadata::{GatewayMetadata, MetadataError};
use super::name::GatewayName;
use super::{AuthMode, Source};
use crate::CliError;

pub const ACTIVE_FILE: &str = "active_gateway";
pub const GATEWAYS_DIR: &str = "gateways";
pub const METADATA_FILE: &str = "metadata.json";
pub const MTLS_DIR: &str = "mtls";
pub const EDGE_TOKEN_FILE: &str = "edge_token";
/// Written by the transport: which path (QUIC/TCP) worked last.
pub const TRANSPORT_FILE: &str = "transport.json";
pub const LAST_SANDBOX_FILE: &str = "last_sandbox";

/// Where the two layers live.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `None` when neither `XDG_CONFIG_HOME` nor `HOME` is set.
    user: Option<PathBuf>,
    system: PathBuf,
}

/// One registration found on disk.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: GatewayName,
    /// `User` or `System`.
    pub source: Source,
    pub metadata: GatewayMetadata,
    /// Normalised endpoint.
    pub endpoint: Endpoint,
    pub auth: AuthMode,
}

impl Registration {
    /// `cloud` for edge gateways, else `remote` or `local` (as upstream's TYPE column).
    pub fn kind(&self) -> &'static str {
        if self.auth == AuthMode::Edge {
            "cloud"
        } else if self.metadata.is_remote {
            "remote"
        } else {
            "local"
        }
    }
}

impl Layout {
    pub fn from_env(env: &Env) -> Layout {
        Layout {
            user: env.user_dir(),
            system: env.system_dir(),
        }
    }

    /// For tests: explicit roots.
    pub fn new(user: Option<PathBuf>, system: PathBuf) -> Layout {
        Layout { user, system }
    }

    /// The per-user root, or an error saying how to provide one.
    pub fn user_root(&self) -> Result<&Path, CliError> {
        self.user.as_deref().ok_or_else(|| {
            CliError::hint(
                "cannot find the per-user config directory: neither XDG_CONFIG_HOME nor HOME is set",
                "Set HOME (or an absolute XDG_CONFIG_HOME) and retry",
            )
        })
    }

    pub fn system_root(&self) -> &Path {
        &self.system
    }

    /// `<user root>/gateways/<name>`.
    pub fn user_gateway_dir(&self, name: &GatewayName) -> Result<PathBuf, CliError> {
        Ok(self.user_root()?.join(GATEWAYS_DIR).join(name.as_str()))
    }

    fn system_gateway_dir(&self, name: &GatewayName) -> PathBuf {
        self.system.join(GATEWAYS_DIR).join(name.as_str())
    }

    /// Whether a user registration (readable or not) exists for `name`.
    pub fn user_entry_exists(&self, name: &GatewayName) -> Result<bool, CliError> {
        Ok(self.user_gateway_dir(name)?.join(METADATA_FILE).exists())
    }

    /// The registration for `name`: user layer first, then system. `Ok(None)` if neither has one.
    pub fn lookup(&self, name: &GatewayName) -> Result<Option<Registration>, CliError> {
        if let Some(user) = &self.user {
            let path = user
                .join(GATEWAYS_DIR)
                .join(name.as_str())
                .join(METADATA_FILE);
            if path.exists() {
                return load(name, Source::User, &path).map(Some);
            }
        }
        let path = self.system_gateway_dir(name).join(METADATA_FILE);
        if path.exists() {
            return load(name, Source::System, &path).map(Some);
        }
        Ok(None)
    }

    /// Every registration, user entries shadowing system ones, sorted by name. Entries that
    /// cannot be read are returned as errors beside the good ones so one broken file does not
    /// hide the rest.
    pub fn list(&self) -> (Vec<Registration>, Vec<CliError>) {
        let mut names = std::collections::BTreeSet::new();
        let mut roots = vec![self.system.clone()];
        roots.extend(self.user.clone());
        for root in roots {
            let Ok(dir) = std::fs::read_dir(root.join(GATEWAYS_DIR)) else {
                continue;
            };
            for entry in dir.flatten() {
                let Some(raw) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Ok(name) = GatewayName::parse(&raw)
                    && entry.path().join(METADATA_FILE).exists()
                {
                    names.insert(name);
                }
            }
        }
        let mut found = Vec::new();
        let mut errors = Vec::new();
        for name in names {
            match self.lookup(&name) {
                Ok(Some(reg)) => found.push(reg),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        (found, errors)
    }

    /// The persisted active gateway: user `active_gateway`, then the system one. Blank or
    /// invalid contents are ignored (as upstream).
    pub fn active(&self) -> Option<GatewayName> {
        let read = |root: &Path| {
            std::fs::read_to_string(root.join(ACTIVE_FILE))
                .ok()
                .and_then(|s| GatewayName::parse(s.trim()).ok())
        };
        self.user
            .as_deref()
            .and_then(read)
            .or_else(|| read(&self.system))
    }

    /// Raw contents of the user `active_gateway` file, to restore it after a failed `add`.
    pub fn user_active_raw(&self) -> Result<Option<Vec<u8>>, CliError> {
        let path = self.user_root()?.join(ACTIVE_FILE);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CliError::msg(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Puts back what [`Layout::user_active_raw`] returned.
    pub fn restore_user_active(&self, previous: Option<&[u8]>) -> Result<(), CliError> {
        let path = self.user_root()?.join(ACTIVE_FILE);
        match previous {
            Some(bytes) => openshell_pki::fs::write_public(&path, bytes)?,
            None => remove_if_exists(&path)?,
        }
        Ok(())
    }

    /// Persists `name` as the user's active gateway.
    pub fn set_active(&self, name: &GatewayName) -> Result<(), CliError> {
        let root = self.user_root()?;
        ensure_user_root(root)?;
        openshell_pki::fs::write_public(&root.join(ACTIVE_FILE), format!("{name}\n").as_bytes())?;
        Ok(())
    }

    /// Clears the user's `active_gateway` if it names `name`; returns whether it did.
    pub fn clear_active_if(&self, name: &GatewayName) -> Result<bool, CliError> {
        let path = self.user_root()?.join(ACTIVE_FILE);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.trim() == name.as_str() {
            remove_if_exists(&path)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes a user registration atomically (creating `gateways/<name>` 0700).
    pub fn write_metadata(
        &self,
        name: &GatewayName,
        meta: &GatewayMetadata,
    ) -> Result<(), CliError> {
        ensure_user_root(self.user_root()?)?;
        let dir = self.user_gateway_dir(name)?;
        openshell_pki::fs::ensure_private_dir(&dir)?;
        openshell_pki::fs::write_public(&dir.join(METADATA_FILE), &meta.to_json())?;
        Ok(())
    }

    /// Deletes the user registration files of `name` that `gateway remove` owns: metadata,
    /// edge token and transport memory. Certificates (`mtls/`) and `last_sandbox` stay, as
    /// upstream, so re-adding the gateway finds them again.
    pub fn remove_user_entry(&self, name: &GatewayName) -> Result<(), CliError> {
        let dir = self.user_gateway_dir(name)?;
        for file in [EDGE_TOKEN_FILE, TRANSPORT_FILE, METADATA_FILE] {
            remove_if_exists(&dir.join(file))?;
        }
        // Leave no empty directory behind; a non-empty one (mtls/, last_sandbox) stays.
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }
}

/// Creates the user root (0700) with an error that names it.
pub fn ensure_user_root(root: &Path) -> Result<(), CliError> {
    openshell_pki::fs::ensure_private_dir(root).map_err(|e| {
        let cause = match &e {
            openshell_pki::fs::FsError::CreateDir { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        CliError::hint(
            format!("cannot create the config directory {}: {cause}", root.display()),
            "Make sure it (or its parent) is a writable directory, or point XDG_CONFIG_HOME elsewhere",
        )
    })
}

pub fn remove_if_exists(path: &Path) -> Result<(), CliError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::msg(format!(
            "cannot delete {}: {e} (check the directory permissions)",
            path.display()
        ))),
    }
}

fn load(name: &GatewayName, source: Source, path: &Path) -> Result<Registration, CliError> {
    match GatewayMetadata::load(path) {
        Ok((metadata, endpoint)) => {
            let auth = metadata.auth(&endpoint);
            Ok(Registration {
                name: name.clone(),
                source,
                metadata,
                endpoint,
                auth,
            })
        }
        Err(err) => {
            let what = match err {
                MetadataError::Read(_) => "cannot be read",
                MetadataError::Parse(_) => "is corrupt",
            };
            let message = format!(
                "gateway '{name}': metadata file {} {what}: {err}",
                path.display()
            );
            let hint = if source == Source::User {
                format!(
                    "Fix it by removing the registration and adding it again:\n  openshell gateway remove {name}\n  openshell gateway add <endpoint> --name {name}"
                )
            } else {
                format!(
                    "This registration is installed by the system: ask your administrator to fix it, or override it with:\n  openshell gateway add <endpoint> --name {name}"
                )
            };
            Err(CliError::hint(message, hint))
        }
    }
}
