//! Provider records: non-secret configuration in the clear, credentials sealed with the
//! gateway's key-encryption key (AES-256-GCM, bound to the provider name). Credential values
//! never leave the gateway through this API; only their names are returned.

use std::collections::BTreeMap;

use openshell_proto::{CreateProviderRequest, ObjectMeta, Provider, UpdateProviderRequest};
use openshell_store::{NewObject, ObjectKind, Precondition, SecretBox, Store, StoredObject};
use prost::Message;

use crate::GatewayError;
use crate::auth::Caller;
use crate::authz::Action;
use crate::services::owners;

/// What is stored per provider (prost-encoded payload).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredProvider {
    #[prost(string, tag = "1")]
    r#type: String,
    #[prost(btree_map = "string, string", tag = "2")]
    config: BTreeMap<String, String>,
    /// Sealed JSON map of credential name -> value.
    #[prost(bytes = "vec", tag = "3")]
    sealed_credentials: Vec<u8>,
    #[prost(string, repeated, tag = "4")]
    credential_keys: Vec<String>,
}

pub(crate) const KIND: ObjectKind = ObjectKind::PROVIDER;

/// Names: what a DNS label allows plus `_` and `.`, 1..=63 characters.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), GatewayError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(GatewayError::InvalidArgument(format!(
            "{what} name '{name}' is invalid: use 1-63 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
        )))
    }
}

fn check_credential_key(key: &str) -> Result<(), GatewayError> {
    let mut chars = key.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(GatewayError::InvalidArgument(format!(
            "credential name '{key}' is invalid: use an environment-variable name such as OPENAI_API_KEY"
        )))
    }
}

fn aad(name: &str) -> Vec<u8> {
    format!("provider:{name}").into_bytes()
}

fn seal(
    secrets: &SecretBox,
    name: &str,
    creds: &BTreeMap<String, String>,
) -> Result<Vec<u8>, GatewayError> {
    let json = serde_json::to_vec(creds).map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok(secrets.seal(&json, &aad(name))?)
}

fn unseal(
    secrets: &SecretBox,
    name: &str,
    sealed: &[u8],
) -> Result<BTreeMap<String, String>, GatewayError> {
    if sealed.is_empty() {
        return Ok(BTreeMap::new());
    }
    let json = secrets.open(sealed, &aad(name))?;
    serde_json::from_slice(&json).map_err(|e| GatewayError::Internal(e.to_string()))
}

fn decode(obj: &StoredObject) -> Result<StoredProvider, GatewayError> {
    StoredProvider::decode(obj.payload.as_slice()).map_err(|e| {
        GatewayError::Internal(format!("stored provider '{}' is unreadable: {e}", obj.name))
    })
}

pub(crate) fn to_wire(obj: &StoredObject) -> Result<Provider, GatewayError> {
    let p = decode(obj)?;
    Ok(Provider {
        meta: Some(ObjectMeta {
            id: obj.id.clone(),
            name: obj.name.clone(),
            labels: owners::user_labels(obj),
            owner: owners::owner_of(obj).to_string(),
            resource_version: obj.resource_version,
            created_at_ms: obj.created_at_ms,
            updated_at_ms: obj.updated_at_ms,
        }),
        r#type: p.r#type,
        config: p.config.into_iter().collect(),
        credential_keys: p.credential_keys,
        shared: owners::is_shared(obj),
    })
}

pub(crate) async fn create(
    store: &dyn Store,
    secrets: &SecretBox,
    caller: &Caller,
    req: CreateProviderRequest,
) -> Result<Provider, GatewayError> {
    check_name("provider", &req.name)?;
    owners::check_user_labels(req.labels.keys())?;
    if req.shared {
        owners::require(caller, Action::ShareProvider)?;
    }
    if req.r#type.trim().is_empty() {
        return Err(GatewayError::InvalidArgument(
            "provider type is required (e.g. openai, anthropic, github, generic)".into(),
        ));
    }
    let creds: BTreeMap<String, String> = req.credentials.into_iter().collect();
    for k in creds.keys() {
        check_credential_key(k)?;
    }
    let stored = StoredProvider {
        r#type: req.r#type,
        config: req.config.into_iter().collect(),
        sealed_credentials: seal(secrets, &req.name, &creds)?,
        credential_keys: creds.keys().cloned().collect(),
    };
    let mut labels = owners::labels_for_new(caller, req.labels);
    if req.shared {
        labels.insert(owners::SHARED_LABEL.into(), "true".into());
    }
    let obj = store
        .create(NewObject::new(KIND, req.name, stored.encode_to_vec()).labels(labels))
        .await?;
    to_wire(&obj)
}

async fn load(store: &dyn Store, name: &str) -> Result<StoredObject, GatewayError> {
    store
        .get(&KIND, name)
        .await?
        .ok_or_else(|| GatewayError::NotFound(format!("provider '{name}'")))
}

/// Provider `name` if `caller` may do `action` on it; someone else's provider is "not
/// found", exactly like a missing one.
async fn load_for(
    store: &dyn Store,
    caller: &Caller,
    action: Action,
    name: &str,
) -> Result<StoredObject, GatewayError> {
    let obj = load(store, name).await?;
    owners::check(caller, action, &obj, || format!("provider '{name}'"))?;
    Ok(obj)
}

pub(crate) async fn get(
    store: &dyn Store,
    caller: &Caller,
    name: &str,
) -> Result<Provider, GatewayError> {
    to_wire(&load_for(store, caller, Action::ReadProvider, name).await?)
}

/// The providers `caller` may read (admins and viewers: all; users: their own and the
/// shared ones), sorted by name. Filtered here rather than by a store selector because a
/// user's set is the union of two selections; providers are few.
pub(crate) async fn list(
    store: &dyn Store,
    caller: &Caller,
    limit: Option<usize>,
    offset: usize,
) -> Result<Vec<Provider>, GatewayError> {
    let objs = store
        .list(
            &KIND,
            &openshell_store::LabelSelector::everything(),
            None,
            0,
        )
        .await?;
    objs.iter()
        .filter(|o| owners::check(caller, Action::ReadProvider, o, String::new).is_ok())
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(to_wire)
        .collect()
}

pub(crate) async fn delete(
    store: &dyn Store,
    caller: &Caller,
    name: &str,
) -> Result<(), GatewayError> {
    let obj = load_for(store, caller, Action::ChangeProvider, name).await?;
    let deleted = store
        .delete(
            &KIND,
            name,
            Precondition::ResourceVersion(obj.resource_version),
        )
        .await?;
    if !deleted {
        return Err(GatewayError::NotFound(format!("provider '{name}'")));
    }
    Ok(())
}

pub(crate) async fn update(
    store: &dyn Store,
    secrets: &SecretBox,
    caller: &Caller,
    req: UpdateProviderRequest,
) -> Result<Provider, GatewayError> {
    let obj = load_for(store, caller, Action::ChangeProvider, &req.name).await?;
    let mut p = decode(&obj)?;
    let mut creds = unseal(secrets, &req.name, &p.sealed_credentials)?;
    for (k, v) in req.credentials {
        check_credential_key(&k)?;
        creds.insert(k, v);
    }
    for k in &req.remove_credentials {
        creds.remove(k);
    }
    p.config.extend(req.config);
    p.sealed_credentials = seal(secrets, &req.name, &creds)?;
    p.credential_keys = creds.keys().cloned().collect();
    let precondition = match req.resource_version {
        0 => Precondition::Unconditional,
        v => Precondition::ResourceVersion(v),
    };
    let updated = store
        .update(
            &KIND,
            &req.name,
            precondition,
            p.encode_to_vec(),
            obj.labels,
        )
        .await?;
    to_wire(&updated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openshell_store::MemoryStore;

    fn secrets() -> SecretBox {
        SecretBox::from_key_bytes(&[7u8; 32]).unwrap()
    }

    fn admin() -> Caller {
        crate::auth::test_caller("root", &[crate::authz::Role::Admin])
    }

    #[tokio::test]
    async fn users_see_their_own_and_shared_providers_only() {
        use crate::authz::Role;
        let store = MemoryStore::new();
        let s = secrets();
        let alice = crate::auth::test_caller("alice", &[Role::User]);
        let bob = crate::auth::test_caller("bob", &[Role::User]);
        let viewer = crate::auth::test_caller("vera", &[Role::Viewer]);
        let new = |name: &str, shared: bool| CreateProviderRequest {
            name: name.into(),
            r#type: "generic".into(),
            shared,
            ..Default::default()
        };
        create(&store, &s, &alice, new("a", false)).await.unwrap();
        create(&store, &s, &admin(), new("team", true))
            .await
            .unwrap();
        create(&store, &s, &admin(), new("private", false))
            .await
            .unwrap();
        let err = create(&store, &s, &bob, new("b", true)).await.unwrap_err();
        assert_eq!(err.to_string(), "role user cannot create shared providers");

        let names = |list: Vec<Provider>| -> Vec<String> {
            list.into_iter().map(|p| p.meta.unwrap().name).collect()
        };
        assert_eq!(
            names(list(&store, &alice, None, 0).await.unwrap()),
            ["a", "team"]
        );
        assert_eq!(names(list(&store, &bob, None, 0).await.unwrap()), ["team"]);
        assert_eq!(
            names(list(&store, &viewer, None, 0).await.unwrap()),
            ["a", "private", "team"]
        );
        // Another user's provider is missing, not forbidden; a shared one is read-only.
        let missing = get(&store, &bob, "nope").await.unwrap_err().to_string();
        assert_eq!(
            get(&store, &bob, "a").await.unwrap_err().to_string(),
            missing.replace("nope", "a")
        );
        assert!(get(&store, &bob, "team").await.unwrap().shared);
        assert_eq!(
            delete(&store, &bob, "team").await.unwrap_err().to_string(),
            "role user cannot change or delete providers of other owners",
            "a shared provider is visible, so the refusal says why"
        );
        assert!(matches!(
            delete(&store, &bob, "a").await,
            Err(GatewayError::NotFound(_))
        ));
        assert_eq!(
            get(&store, &alice, "a").await.unwrap().meta.unwrap().owner,
            "alice"
        );
        delete(&store, &alice, "a").await.unwrap();
    }

    #[tokio::test]
    async fn credentials_are_sealed_and_only_names_returned() {
        let store = MemoryStore::new();
        let s = secrets();
        let p = create(
            &store,
            &s,
            &admin(),
            CreateProviderRequest {
                name: "openai".into(),
                r#type: "openai".into(),
                credentials: [("OPENAI_API_KEY".to_string(), "sk-secret".to_string())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(p.credential_keys, vec!["OPENAI_API_KEY".to_string()]);
        let raw = store.get(&KIND, "openai").await.unwrap().unwrap();
        assert!(
            !raw.payload.windows(9).any(|w| w == b"sk-secret"),
            "credential stored in the clear"
        );
        let sealed = decode(&raw).unwrap().sealed_credentials;
        let creds = unseal(&s, "openai", &sealed).unwrap();
        assert_eq!(creds["OPENAI_API_KEY"], "sk-secret");
    }

    #[tokio::test]
    async fn stale_update_is_refused() {
        let store = MemoryStore::new();
        let s = secrets();
        let p = create(
            &store,
            &s,
            &admin(),
            CreateProviderRequest {
                name: "gh".into(),
                r#type: "github".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let v = p.meta.unwrap().resource_version;
        let req = |v| UpdateProviderRequest {
            name: "gh".into(),
            resource_version: v,
            config: [("org".to_string(), "acme".to_string())].into(),
            ..Default::default()
        };
        update(&store, &s, &admin(), req(v)).await.unwrap();
        let err = update(&store, &s, &admin(), req(v)).await.unwrap_err();
        assert!(matches!(
            err,
            GatewayError::Store(openshell_store::StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "-x", "a b", "x/y", &"a".repeat(64)] {
            assert!(check_name("provider", bad).is_err(), "{bad}");
        }
        assert!(check_credential_key("1ABC").is_err());
        assert!(check_credential_key("OPENAI_API_KEY").is_ok());
    }
}
