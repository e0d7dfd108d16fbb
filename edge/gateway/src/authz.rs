//! Who may do what: one decision for every RPC and every tunnel, from (caller, action,
//! object). Pure logic, no I/O: `auth` works out the caller and calls [`decide`] before a
//! handler runs (role rights), and handlers call it again once they have loaded the object
//! (ownership). Handlers never re-implement a rule.
//!
//! # Roles
//!
//! | role | what it grants |
//! |---|---|
//! | `admin` | everything, on every owner's objects; global settings (global policy, inference routes, shared providers) |
//! | `user` | create sandboxes and providers; act only on its own objects; read and use providers an admin shared |
//! | `viewer` | read-only across all owners: list, get, logs, watch, policy and inference reads; no tunnels, no exec, no changes |
//!
//! A certificate without a role is a `user`. Roles outside this table (and `edge-proxy`,
//! which only lets a reverse proxy name users) grant nothing. An identity with several
//! roles gets the union.
//!
//! # The matrix (role x RPC or tunnel)
//!
//! "own" means objects whose owner is the caller; someone else's object answers exactly like a
//! missing one (NOT_FOUND), so names of other owners' objects never leak through errors.
//! A right a role lacks answers PERMISSION_DENIED naming it ("role viewer cannot delete
//! sandboxes").
//!
//! | RPC / tunnel | admin | user | viewer |
//! |---|---|---|---|
//! | Health | public | public | public |
//! | GetGatewayInfo, GetCurrentUser | yes | yes | yes |
//! | Diagnostics (Ping, Download, Upload, Echo) | yes | yes | yes |
//! | CreateSandbox | yes | yes | no |
//! | GetSandbox, GetSandboxLogs, WatchSandboxes (one) | all | own | all |
//! | ListSandboxes, WatchSandboxes (`--all`) | all | own (`--all` refused) | all |
//! | StopSandbox, StartSandbox, DeleteSandbox | all | own | no |
//! | ExecSandbox, CreateSshSession, RevokeSshSession | all | own | no |
//! | tunnel `sandbox/NAME/ssh` (connect, exec, ssh, scp, sftp, upload, download) | all | own | no |
//! | tunnel `sandbox/NAME/port/P` (forward) | all | own | no |
//! | tunnels `echo`, `source`, `sink`, `service/NAME` | yes | yes | no |
//! | CreateProvider | yes (may share) | yes (never shared) | no |
//! | GetProvider, ListProviders | all | own + shared | all |
//! | UpdateProvider, DeleteProvider | all | own | no |
//! | attach a provider to a sandbox (CreateSandbox `providers`) | all | own + shared | no |
//! | GetSandboxPolicy, ListSandboxPolicies | all | own sandboxes | all |
//! | SetSandboxPolicy, DeleteSandboxPolicy (one sandbox) | all | own sandboxes | no |
//! | SetSandboxPolicy, DeleteSandboxPolicy (`global`) | yes | no | no |
//! | GetInference | yes | yes | yes |
//! | SetInference, DeleteInference | yes | no | no |
//! | Supervisor service, `relay/ID` tunnels | sandbox credentials only, each for its own sandbox |||
//!
//! Objects created before ownership existed belong to [`ADMINS`]: only admins see them.
//!
//! Names are one namespace per kind (SSH host aliases, tunnels and known_hosts entries use
//! them), so creating a sandbox or provider under a name another owner already uses answers
//! ALREADY_EXISTS: the one place a name of someone else's object shows. Nothing else about it
//! does.

use std::fmt;

/// A role this gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Admin,
    User,
    Viewer,
}

impl Role {
    /// Every role, in the order they are listed to users.
    pub const ALL: [Role; 3] = [Role::Admin, Role::User, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roles of one identity (a small set; the union of their rights applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles(Vec<Role>);

impl Roles {
    pub fn new(mut roles: Vec<Role>) -> Roles {
        roles.sort();
        roles.dedup();
        Roles(roles)
    }

    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    pub fn iter(&self) -> impl Iterator<Item = Role> + '_ {
        self.0.iter().copied()
    }

    /// "role viewer" or "roles user, viewer", as refusals name them.
    fn describe(&self) -> String {
        match self.0.as_slice() {
            [] => "an identity without a role".to_string(),
            [one] => format!("role {one}"),
            many => format!(
                "roles {}",
                many.iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The owner recorded for objects created before ownership existed: admins only.
pub const ADMINS: &str = "system:admins";

/// Something a caller wants to do. Each RPC and tunnel maps to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Gateway facts about itself and the caller; diagnostics.
    ReadGateway,
    CreateSandbox,
    ReadSandbox,
    /// List or watch every owner's sandboxes (`--all`).
    ReadAllSandboxes,
    StopSandbox,
    StartSandbox,
    DeleteSandbox,
    /// Exec, SSH and port tunnels into a sandbox.
    ReachSandbox,
    /// Built-in and operator-registered tunnel targets (`echo`, `service/NAME`, ...).
    OpenServiceTunnel,
    CreateProvider,
    /// Create a provider other users may read and attach.
    ShareProvider,
    ReadProvider,
    ChangeProvider,
    /// Attach a provider to a sandbox.
    UseProvider,
    ReadPolicy,
    /// Set or delete the policy of one sandbox.
    ChangePolicy,
    /// Set or delete the gateway-wide policy.
    ChangeGlobalPolicy,
    ReadInference,
    ChangeInference,
}

impl Action {
    /// What the action is, as "role viewer cannot ..." finishes it.
    pub fn phrase(self) -> &'static str {
        match self {
            Action::ReadGateway => "read gateway information",
            Action::CreateSandbox => "create sandboxes",
            Action::ReadSandbox => "read sandboxes",
            Action::ReadAllSandboxes => "list other owners' sandboxes",
            Action::StopSandbox => "stop sandboxes",
            Action::StartSandbox => "start sandboxes",
            Action::DeleteSandbox => "delete sandboxes",
            Action::ReachSandbox => "open tunnels or exec into sandboxes",
            Action::OpenServiceTunnel => "open tunnels",
            Action::CreateProvider => "create providers",
            Action::ShareProvider => "create shared providers",
            Action::ReadProvider => "read providers",
            Action::ChangeProvider => "change or delete providers",
            Action::UseProvider => "attach providers to sandboxes",
            Action::ReadPolicy => "read policies",
            Action::ChangePolicy => "change sandbox policies",
            Action::ChangeGlobalPolicy => "change the global policy",
            Action::ReadInference => "read inference routes",
            Action::ChangeInference => "change inference routes",
        }
    }

    /// The name audit lines use.
    pub fn name(self) -> &'static str {
        match self {
            Action::ReadGateway => "gateway.read",
            Action::CreateSandbox => "sandbox.create",
            Action::ReadSandbox => "sandbox.read",
            Action::ReadAllSandboxes => "sandbox.read_all",
            Action::StopSandbox => "sandbox.stop",
            Action::StartSandbox => "sandbox.start",
            Action::DeleteSandbox => "sandbox.delete",
            Action::ReachSandbox => "sandbox.reach",
            Action::OpenServiceTunnel => "tunnel.service",
            Action::CreateProvider => "provider.create",
            Action::ShareProvider => "provider.share",
            Action::ReadProvider => "provider.read",
            Action::ChangeProvider => "provider.change",
            Action::UseProvider => "provider.use",
            Action::ReadPolicy => "policy.read",
            Action::ChangePolicy => "policy.change",
            Action::ChangeGlobalPolicy => "policy.change_global",
            Action::ReadInference => "inference.read",
            Action::ChangeInference => "inference.change",
        }
    }

    /// The read of the same kind of object: what decides whether the caller can see an
    /// object it may not change (then the refusal says so instead of "not found").
    fn read_of(self) -> Option<Action> {
        match self {
            Action::StopSandbox
            | Action::StartSandbox
            | Action::DeleteSandbox
            | Action::ReachSandbox => Some(Action::ReadSandbox),
            Action::ChangeProvider | Action::UseProvider => Some(Action::ReadProvider),
            Action::ChangePolicy => Some(Action::ReadPolicy),
            _ => None,
        }
    }

    /// Whether the action changes state (audited whatever its outcome).
    pub fn mutates(self) -> bool {
        !matches!(
            self,
            Action::ReadGateway
                | Action::ReadSandbox
                | Action::ReadAllSandboxes
                | Action::ReadProvider
                | Action::ReadPolicy
                | Action::ReadInference
        )
    }

    /// How far a role's right reaches for this action.
    fn reach(self, role: Role) -> Reach {
        use Action as A;
        use Reach::*;
        match role {
            Role::Admin => All,
            Role::Viewer => match self {
                A::ReadGateway
                | A::ReadSandbox
                | A::ReadAllSandboxes
                | A::ReadProvider
                | A::ReadPolicy
                | A::ReadInference => All,
                _ => Nothing,
            },
            Role::User => match self {
                A::ReadGateway | A::CreateSandbox | A::CreateProvider | A::ReadInference => All,
                A::OpenServiceTunnel => All,
                A::ReadProvider | A::UseProvider => OwnOrShared,
                A::ReadSandbox
                | A::StopSandbox
                | A::StartSandbox
                | A::DeleteSandbox
                | A::ReachSandbox
                | A::ChangeProvider
                | A::ReadPolicy
                | A::ChangePolicy => Own,
                A::ReadAllSandboxes
                | A::ShareProvider
                | A::ChangeGlobalPolicy
                | A::ChangeInference => Nothing,
            },
        }
    }
}

/// How far a right reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    Nothing,
    Own,
    OwnOrShared,
    All,
}

/// The object an action is about, as far as authorization cares.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    /// The owner's subject (or [`ADMINS`]).
    pub owner: &'a str,
    /// A provider an admin shared with every user.
    pub shared: bool,
}

/// Why an action is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The caller's roles lack the right: PERMISSION_DENIED with this text.
    Forbidden(String),
    /// The object exists but is not the caller's to see: answer exactly as if it were
    /// missing.
    Hidden,
}

/// The one decision. `object` is `None` for the role check made before the object is
/// loaded (and for actions without one): it passes when some role has any reach.
pub fn decide(
    subject: &str,
    roles: &Roles,
    action: Action,
    object: Option<Object<'_>>,
) -> Result<(), Denial> {
    let reach = roles
        .iter()
        .map(|r| action.reach(r))
        .max()
        .unwrap_or(Reach::Nothing);
    let allowed = match (reach, object) {
        (Reach::Nothing, _) => {
            return Err(Denial::Forbidden(format!(
                "{} cannot {}",
                roles.describe(),
                action.phrase()
            )));
        }
        (_, None) | (Reach::All, Some(_)) => true,
        (Reach::Own, Some(o)) => o.owner == subject,
        (Reach::OwnOrShared, Some(o)) => o.owner == subject || o.shared,
    };
    if allowed {
        return Ok(());
    }
    // An object the caller can see (a viewer's read, a shared provider) is not hidden:
    // say what is missing rather than pretend it does not exist.
    let visible = action
        .read_of()
        .is_some_and(|read| decide(subject, roles, read, object).is_ok());
    if visible {
        Err(Denial::Forbidden(format!(
            "{} cannot {} of other owners",
            roles.describe(),
            action.phrase()
        )))
    } else {
        Err(Denial::Hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(r: &[Role]) -> Roles {
        Roles::new(r.to_vec())
    }

    const ALICE: Object<'static> = Object {
        owner: "alice",
        shared: false,
    };

    #[test]
    fn admins_reach_every_owner() {
        let admin = roles(&[Role::Admin]);
        for action in [
            Action::DeleteSandbox,
            Action::ReachSandbox,
            Action::ChangeProvider,
            Action::ChangeGlobalPolicy,
            Action::ChangeInference,
            Action::ShareProvider,
        ] {
            assert_eq!(decide("root", &admin, action, Some(ALICE)), Ok(()));
        }
        let legacy = Object {
            owner: ADMINS,
            shared: false,
        };
        assert_eq!(
            decide("root", &admin, Action::ReadSandbox, Some(legacy)),
            Ok(())
        );
        assert_eq!(
            decide(
                "alice",
                &roles(&[Role::User]),
                Action::ReadSandbox,
                Some(legacy)
            ),
            Err(Denial::Hidden),
            "objects from before ownership are the admins' only"
        );
    }

    #[test]
    fn users_act_on_their_own_and_others_look_missing() {
        let user = roles(&[Role::User]);
        assert_eq!(
            decide("alice", &user, Action::DeleteSandbox, Some(ALICE)),
            Ok(())
        );
        assert_eq!(
            decide("bob", &user, Action::DeleteSandbox, Some(ALICE)),
            Err(Denial::Hidden)
        );
        assert_eq!(
            decide("bob", &user, Action::ReachSandbox, Some(ALICE)),
            Err(Denial::Hidden)
        );
        // Shared providers are readable and usable, never changeable.
        let shared = Object {
            owner: "root",
            shared: true,
        };
        assert_eq!(
            decide("bob", &user, Action::UseProvider, Some(shared)),
            Ok(())
        );
        assert_eq!(
            decide("bob", &user, Action::ReadProvider, Some(shared)),
            Ok(())
        );
        assert_eq!(
            decide("bob", &user, Action::ChangeProvider, Some(shared)),
            Err(Denial::Forbidden(
                "role user cannot change or delete providers of other owners".into()
            )),
            "a shared provider is visible, so the refusal says why"
        );
        assert_eq!(
            decide("bob", &user, Action::ChangeInference, None),
            Err(Denial::Forbidden(
                "role user cannot change inference routes".into()
            ))
        );
        assert!(decide("bob", &user, Action::ReadAllSandboxes, None).is_err());
    }

    #[test]
    fn viewers_read_everything_and_change_nothing() {
        let viewer = roles(&[Role::Viewer]);
        for action in [
            Action::ReadSandbox,
            Action::ReadAllSandboxes,
            Action::ReadProvider,
            Action::ReadPolicy,
            Action::ReadInference,
            Action::ReadGateway,
        ] {
            assert_eq!(
                decide("v", &viewer, action, Some(ALICE)),
                Ok(()),
                "{action:?}"
            );
        }
        assert_eq!(
            decide("v", &viewer, Action::DeleteSandbox, Some(ALICE)),
            Err(Denial::Forbidden(
                "role viewer cannot delete sandboxes".into()
            ))
        );
        for action in [
            Action::CreateSandbox,
            Action::StopSandbox,
            Action::StartSandbox,
            Action::ReachSandbox,
            Action::OpenServiceTunnel,
            Action::CreateProvider,
            Action::ChangeProvider,
            Action::UseProvider,
            Action::ChangePolicy,
            Action::ChangeInference,
        ] {
            assert!(
                matches!(
                    decide("v", &viewer, action, None),
                    Err(Denial::Forbidden(_))
                ),
                "{action:?}"
            );
        }
    }

    #[test]
    fn no_role_grants_nothing_and_roles_combine() {
        assert_eq!(
            decide("x", &Roles::default(), Action::ReadGateway, None),
            Err(Denial::Forbidden(
                "an identity without a role cannot read gateway information".into()
            ))
        );
        let both = roles(&[Role::Viewer, Role::User]);
        // user's own-only delete plus viewer's read-all.
        assert_eq!(
            decide("bob", &both, Action::ReadSandbox, Some(ALICE)),
            Ok(())
        );
        assert_eq!(
            decide("bob", &both, Action::DeleteSandbox, Some(ALICE)),
            Err(Denial::Forbidden(
                "roles user, viewer cannot delete sandboxes of other owners".into()
            ))
        );
    }

    #[test]
    fn only_reads_are_unaudited() {
        assert!(!Action::ReadSandbox.mutates());
        assert!(Action::ReachSandbox.mutates());
        assert!(Action::CreateProvider.mutates());
    }
}
