//! The gateway's id: the value of the `openshell.gateway` ownership label on its workloads.
//! The start-up reconcile removes workloads carrying this id that have no record, so two
//! gateways sharing an id on one runtime delete each other's sandboxes. Each state
//! directory therefore gets its own id, generated at its first start and kept in
//! `<state-dir>/gateway-id`; `--gateway-id` (or `OPENSHELL_GATEWAY_ID`) overrides it.

use std::path::Path;

use openshell_drivers::GatewayId;

use crate::GatewayError;

/// The file in the state directory that holds the id.
pub const ID_FILE: &str = "gateway-id";

/// The id every gateway had before ids were per state directory. A state directory from
/// then (it has a database but no id file) keeps it, so its running sandboxes stay its own.
pub const LEGACY_ID: &str = "openshell";

/// The id this gateway runs with: `flag` when given, else the one stored in `state_dir`,
/// else a new one (stored for the next start).
pub fn resolve(state_dir: &Path, flag: Option<&str>) -> Result<GatewayId, GatewayError> {
    if let Some(id) = flag {
        return GatewayId::new(id).map_err(|e| GatewayError::Config(format!("--gateway-id: {e}")));
    }
    let path = state_dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return GatewayId::new(text.trim()).map_err(|e| {
                GatewayError::Config(format!(
                    "{}: {e}; delete the file to get a new id (workloads labelled with the old one are then no longer this gateway's), or pass --gateway-id",
                    path.display()
                ))
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(GatewayError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    }
    let legacy = state_dir
        .join(openshell_store::SqliteStore::DEFAULT_FILE_NAME)
        .exists();
    let id = if legacy {
        tracing::warn!(
            "this state directory predates per-gateway ids: it keeps the old default id `{LEGACY_ID}` so its sandboxes stay its own; if another gateway on the same runtime also runs with `{LEGACY_ID}`, they remove each other's sandboxes: give one of them its own --gateway-id"
        );
        GatewayId::new(LEGACY_ID)
    } else {
        GatewayId::new(format!("gw-{}", uuid::Uuid::new_v4().simple()))
    }
    .map_err(|e| GatewayError::Internal(e.to_string()))?;
    openshell_pki::fs::write_public(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_dir_gets_its_own_id_and_keeps_it() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let id_a = resolve(a.path(), None).unwrap();
        let id_b = resolve(b.path(), None).unwrap();
        assert_ne!(id_a, id_b);
        assert!(id_a.as_str().starts_with("gw-"), "{id_a}");
        assert_eq!(resolve(a.path(), None).unwrap(), id_a);
        // The flag overrides and is not stored.
        assert_eq!(resolve(a.path(), Some("mine")).unwrap().as_str(), "mine");
        assert_eq!(resolve(a.path(), None).unwrap(), id_a);
        assert!(resolve(a.path(), Some("a b")).is_err());
    }

    #[test]
    fn an_older_state_dir_keeps_the_old_default_and_a_bad_file_is_named() {
        let old = tempfile::tempdir().unwrap();
        std::fs::write(
            old.path()
                .join(openshell_store::SqliteStore::DEFAULT_FILE_NAME),
            b"",
        )
        .unwrap();
        assert_eq!(resolve(old.path(), None).unwrap().as_str(), LEGACY_ID);
        assert!(old.path().join(ID_FILE).exists());
        std::fs::write(old.path().join(ID_FILE), "not valid!\n").unwrap();
        let err = resolve(old.path(), None).unwrap_err().to_string();
        assert!(
            err.contains(ID_FILE) && err.contains("--gateway-id"),
            "{err}"
        );
    }
}
