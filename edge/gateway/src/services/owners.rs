//! Who owns a stored object, kept in labels the gateway reserves (`openshell.io/...`): the
//! owner's subject, and for providers whether an admin shared it. Labels, not payload
//! fields, so the store filters a user's own objects itself (and paginates them right).
//!
//! The SQLite store's migration 2 gave every sandbox and provider created before
//! ownership existed the owner [`ADMINS`]; an object without the label is treated the same.

use std::collections::{BTreeMap, HashMap};

use openshell_store::{LabelSelector, StoredObject};

use crate::GatewayError;
use crate::auth::Caller;
use crate::authz::{ADMINS, Action, Denial, Object};

/// The owner's subject.
pub const OWNER_LABEL: &str = "openshell.io/owner";
/// `true` on a provider an admin shared with every user.
pub const SHARED_LABEL: &str = "openshell.io/shared";
/// Labels with this prefix are the gateway's; users may neither set nor see them as labels.
pub const RESERVED_PREFIX: &str = "openshell.io/";

/// The owner recorded on `obj`.
pub fn owner_of(obj: &StoredObject) -> &str {
    obj.labels
        .get(OWNER_LABEL)
        .map(String::as_str)
        .unwrap_or(ADMINS)
}

/// Whether an admin shared `obj` (a provider) with every user.
pub fn is_shared(obj: &StoredObject) -> bool {
    obj.labels.get(SHARED_LABEL).is_some_and(|v| v == "true")
}

/// Whether `caller` may do `action` on `obj`; someone else's object is reported exactly as
/// a missing one (`what` is the text of that NotFound, e.g. "sandbox 'x'").
pub fn check(
    caller: &Caller,
    action: Action,
    obj: &StoredObject,
    what: impl FnOnce() -> String,
) -> Result<(), GatewayError> {
    let object = Object {
        owner: owner_of(obj),
        shared: is_shared(obj),
    };
    match caller.may(action, Some(object)) {
        Ok(()) => Ok(()),
        Err(Denial::Forbidden(m)) => Err(GatewayError::Forbidden(m)),
        Err(Denial::Hidden) => Err(GatewayError::NotFound(what())),
    }
}

/// A role check that names no object (e.g. listing every owner's sandboxes).
pub fn require(caller: &Caller, action: Action) -> Result<(), GatewayError> {
    match caller.may(action, None) {
        Ok(()) => Ok(()),
        Err(Denial::Forbidden(m)) => Err(GatewayError::Forbidden(m)),
        Err(Denial::Hidden) => Err(GatewayError::Forbidden(format!(
            "cannot {}",
            action.phrase()
        ))),
    }
}

/// Refuses labels a user tries to set in the gateway's reserved namespace.
pub fn check_user_labels<'a>(
    labels: impl IntoIterator<Item = &'a String>,
) -> Result<(), GatewayError> {
    for key in labels {
        if key.starts_with(RESERVED_PREFIX) {
            return Err(GatewayError::InvalidArgument(format!(
                "label '{key}' is reserved for the gateway (keys starting with '{RESERVED_PREFIX}'): choose another key"
            )));
        }
    }
    Ok(())
}

/// The labels users see: everything but the reserved ones.
pub fn user_labels(obj: &StoredObject) -> HashMap<String, String> {
    obj.labels
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The stored labels of a new object: the user's plus its owner.
pub fn labels_for_new(
    caller: &Caller,
    user: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = user.into_iter().collect();
    labels.insert(OWNER_LABEL.into(), caller.subject().to_string());
    labels
}

/// The selector of objects `caller` lists: `selector` narrowed to the caller's own unless
/// `all` (which needs the right to read every owner's).
pub fn scope(
    caller: &Caller,
    selector: LabelSelector,
    all: bool,
    all_action: Action,
) -> Result<LabelSelector, GatewayError> {
    if all {
        require(caller, all_action)?;
        Ok(selector)
    } else {
        Ok(selector.with(OWNER_LABEL, caller.subject()))
    }
}
