//! The generic object model every backend stores: kinds, objects, selectors, preconditions
//! and change events.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, StoreError};

/// Labels attached to an object: free-form `key=value` pairs used by [`LabelSelector`]s.
pub type Labels = BTreeMap<String, String>;

/// Longest accepted kind, in bytes.
const MAX_KIND_LEN: usize = 64;

/// The type of a stored object, e.g. `sandbox`.
///
/// A newtype rather than an enum so the gateway can add kinds without a store change; the
/// store treats all kinds alike. A kind is 1 to 64 bytes of `[a-z0-9_]`, starting with a
/// letter, because it is persisted and appears in error messages.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKind(Cow<'static, str>);

impl ObjectKind {
    /// A sandbox (`openshell.v1.Sandbox`).
    pub const SANDBOX: ObjectKind = ObjectKind::from_static("sandbox");
    /// A credential provider (`openshell.v1.Provider`), credentials sealed by
    /// [`SecretBox`](crate::SecretBox).
    pub const PROVIDER: ObjectKind = ObjectKind::from_static("provider");
    /// A sandbox or global policy revision (`openshell.v1.SandboxPolicy`).
    pub const SANDBOX_POLICY: ObjectKind = ObjectKind::from_static("sandbox_policy");
    /// An inference route.
    pub const INFERENCE_ROUTE: ObjectKind = ObjectKind::from_static("inference_route");
    /// An SSH session token.
    pub const SSH_SESSION: ObjectKind = ObjectKind::from_static("ssh_session");
    /// Which edge holds a sandbox supervisor's session. Reserved for scale-out (several edges
    /// sharing one store), where an edge looks this up to relay a tunnel to the owning edge.
    pub const SUPERVISOR_SESSION: ObjectKind = ObjectKind::from_static("supervisor_session");

    /// A kind known at compile time. Panics (at compile time when used in a `const`) if
    /// `kind` is not a valid kind.
    pub const fn from_static(kind: &'static str) -> Self {
        assert!(is_valid_kind(kind), "invalid object kind");
        ObjectKind(Cow::Borrowed(kind))
    }

    /// A kind from runtime data, validated.
    pub fn new(kind: impl Into<String>) -> Result<Self> {
        let kind = kind.into();
        if !is_valid_kind(&kind) {
            return Err(StoreError::InvalidArgument(format!(
                "object kind {kind:?} must be 1 to {MAX_KIND_LEN} characters of [a-z0-9_] \
                 starting with a letter"
            )));
        }
        Ok(ObjectKind(Cow::Owned(kind)))
    }

    /// The kind as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const fn is_valid_kind(kind: &str) -> bool {
    let bytes = kind.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KIND_LEN || !bytes[0].is_ascii_lowercase() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKind({})", self.0)
    }
}

/// What a caller hands to [`Store::create`](crate::Store::create). The store assigns the
/// id, the resource version and the timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewObject {
    /// The object's type.
    pub kind: ObjectKind,
    /// Unique within `kind`; must not be empty.
    pub name: String,
    /// Labels matched by [`LabelSelector`]s.
    pub labels: Labels,
    /// The object body, prost-encoded by the caller. The store never looks inside.
    pub payload: Vec<u8>,
}

impl NewObject {
    /// An object without labels.
    pub fn new(kind: ObjectKind, name: impl Into<String>, payload: Vec<u8>) -> Self {
        NewObject {
            kind,
            name: name.into(),
            labels: Labels::new(),
            payload,
        }
    }

    /// Adds one label (replacing an earlier value for the same key).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Replaces all labels.
    pub fn labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }
}

/// An object as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// A UUIDv4 assigned at creation; never changes, never reused.
    pub id: String,
    /// The object's type.
    pub kind: ObjectKind,
    /// Unique within `kind`.
    pub name: String,
    /// Labels matched by [`LabelSelector`]s.
    pub labels: Labels,
    /// The object body, prost-encoded by the caller.
    pub payload: Vec<u8>,
    /// The store-wide write counter at this object's last write (see
    /// [`Store`](crate::Store) for the guarantees). Always > 0.
    pub resource_version: i64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Last write time, milliseconds since the Unix epoch; never before `created_at_ms`.
    pub updated_at_ms: i64,
}

// Hand-written so logs show the size of the payload, never its bytes (payloads of
// providers carry sealed credentials).
impl fmt::Debug for StoredObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredObject")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("payload_len", &self.payload.len())
            .field("resource_version", &self.resource_version)
            .field("created_at_ms", &self.created_at_ms)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// Selects objects by label: every `key=value` pair must be present on the object. The
/// empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Labels);

impl LabelSelector {
    /// Selects every object.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// Adds a required `key=value` pair.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Whether `labels` carries every pair of this selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// The required pairs.
    pub fn requirements(&self) -> &Labels {
        &self.0
    }

    /// Whether this selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Labels> for LabelSelector {
    fn from(labels: Labels) -> Self {
        LabelSelector(labels)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for LabelSelector {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        LabelSelector(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// The condition a write needs to hold before it is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Apply whatever the stored version is (last writer wins).
    Unconditional,
    /// Apply only if the stored resource version equals this one, otherwise fail with
    /// [`StoreError::Conflict`]. The wire uses `0` for "unconditional"; the gateway maps it.
    ResourceVersion(i64),
}

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The object was created.
    Added,
    /// The object was updated.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// A change notification from [`Store::subscribe`](crate::Store::subscribe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEvent {
    /// What happened.
    pub kind: EventKind,
    /// The object after the write. For [`EventKind::Deleted`], its last stored state with
    /// `resource_version` set to the version the deletion consumed.
    pub object: StoredObject,
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Checks that do not depend on the backend, so both refuse the same input.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(StoreError::InvalidArgument(
            "object name must not be empty".to_owned(),
        ));
    }
    Ok(())
}

pub(crate) fn validate_labels(labels: &Labels) -> Result<()> {
    if labels.keys().any(String::is_empty) {
        return Err(StoreError::InvalidArgument(
            "label keys must not be empty".to_owned(),
        ));
    }
    Ok(())
}

pub(crate) fn validate_page(limit: Option<usize>, offset: usize) -> Result<()> {
    // SQLite takes 64-bit signed limits; refuse what it cannot express instead of wrapping.
    let too_big = |n: usize| i64::try_from(n).is_err();
    if limit.is_some_and(too_big) || too_big(offset) {
        return Err(StoreError::InvalidArgument(
            "list limit and offset must fit in 63 bits".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_validated() {
        assert_eq!(ObjectKind::new("sandbox").unwrap(), ObjectKind::SANDBOX);
        assert_eq!(
            ObjectKind::new("draft_policy_2").unwrap().as_str(),
            "draft_policy_2"
        );
        for bad in [
            "",
            "Sandbox",
            "2fa",
            "_x",
            "a-b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            let err = ObjectKind::new(bad).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidArgument(_)),
                "{bad:?} accepted: {err}"
            );
        }
        assert!(ObjectKind::new("a".repeat(64)).is_ok());
    }

    #[test]
    fn selector_requires_every_pair() {
        let labels: Labels = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(LabelSelector::everything().matches(&labels));
        assert!(
            LabelSelector::everything()
                .with("app", "web")
                .matches(&labels)
        );
        assert!(
            LabelSelector::everything()
                .with("app", "web")
                .with("tier", "front")
                .matches(&labels)
        );
        assert!(
            !LabelSelector::everything()
                .with("app", "web")
                .with("tier", "back")
                .matches(&labels)
        );
        assert!(
            !LabelSelector::everything()
                .with("zone", "a")
                .matches(&labels)
        );
    }

    #[test]
    fn debug_hides_payload() {
        let object = StoredObject {
            id: "id".into(),
            kind: ObjectKind::PROVIDER,
            name: "p".into(),
            labels: Labels::new(),
            payload: b"hunter2".to_vec(),
            resource_version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let shown = format!("{object:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("104, 117"),
            "{shown}"
        );
        assert!(shown.contains("payload_len: 7"), "{shown}");
    }
}
