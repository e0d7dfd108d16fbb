//! A local copy of this gateway's Pods and Secrets, kept current by a watch: `get` and
//! `list` (which the gateway calls often, for every status it shows) read it instead of
//! asking the apiserver each time.
//!
//! ```text
//!   list pods+secrets (selector) --> replace the copy, synced
//!   watch both from that version --> apply Added/Modified/Deleted
//!   watch fails (apiserver gone)  --> not synced: reads go to the apiserver (and fail
//!                                     there, saying so) until a new list succeeds
//! ```
//!
//! The driver's own writes go into the copy at once (read your writes); objects it deleted
//! are remembered by uid until their Deleted event, so a late event cannot bring them back.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, WatchEvent};
use kube::{Resource, ResourceExt};
use openshell_drivers::{DriverError, GatewayId, SandboxId};

use crate::driver::{Errors, Fail, rewatch};
use crate::objects;

#[derive(Default)]
struct State {
    synced: bool,
    pods: BTreeMap<String, Pod>,
    secrets: BTreeMap<String, Secret>,
    /// Uids of objects this driver deleted whose Deleted event has not arrived yet.
    gone: HashSet<String>,
}

/// The copy and the task that keeps it; the task stops when the mirror is dropped.
pub(crate) struct Mirror {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Inserts `obj` by name unless this driver deleted it (by uid).
fn put<K: Resource>(map: &mut BTreeMap<String, K>, gone: &HashSet<String>, obj: K) {
    if obj.uid().is_some_and(|u| gone.contains(&u)) {
        return;
    }
    map.insert(obj.name_any(), obj);
}

impl Mirror {
    /// Starts keeping the copy of the objects matching `selector`.
    pub(crate) fn start(
        pods: Api<Pod>,
        secrets: Api<Secret>,
        gateway: GatewayId,
        errors: Errors,
        request_timeout: Duration,
    ) -> Mirror {
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(run(
            state.clone(),
            pods,
            secrets,
            gateway,
            errors,
            request_timeout,
        ));
        Mirror { state, task }
    }

    /// This gateway's Pods and Secrets (of sandbox `id` only, with `id`), or `None` while
    /// the copy is not in sync.
    pub(crate) fn snapshot(&self, id: Option<&SandboxId>) -> Option<(Vec<Pod>, Vec<Secret>)> {
        let st = lock(&self.state);
        let wanted =
            |meta: &ObjectMeta| id.is_none_or(|id| objects::id_of(meta).as_ref() == Some(id));
        st.synced.then(|| {
            (
                st.pods
                    .values()
                    .filter(|p| wanted(&p.metadata))
                    .cloned()
                    .collect(),
                st.secrets
                    .values()
                    .filter(|s| wanted(&s.metadata))
                    .cloned()
                    .collect(),
            )
        })
    }

    pub(crate) fn put_pod(&self, pod: &Pod) {
        let mut st = lock(&self.state);
        let st = &mut *st;
        put(&mut st.pods, &st.gone, pod.clone());
    }

    pub(crate) fn put_secret(&self, secret: &Secret) {
        let mut st = lock(&self.state);
        let st = &mut *st;
        put(&mut st.secrets, &st.gone, secret.clone());
    }

    /// A Pod this driver deleted (and saw go).
    pub(crate) fn forget_pod(&self, pod: &Pod) {
        let mut st = lock(&self.state);
        if let Some(uid) = pod.uid() {
            st.gone.insert(uid);
        }
        st.pods.remove(&pod.name_any());
    }

    pub(crate) fn forget_secret(&self, secret: &Secret) {
        let mut st = lock(&self.state);
        if let Some(uid) = secret.uid() {
            st.gone.insert(uid);
        }
        st.secrets.remove(&secret.name_any());
    }
}

enum Seen {
    Pod(Box<WatchEvent<Pod>>),
    Secret(Box<WatchEvent<Secret>>),
}

async fn run(
    state: Arc<Mutex<State>>,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    gateway: GatewayId,
    errors: Errors,
    request_timeout: Duration,
) {
    let selector = objects::selector(&gateway, None);
    let mut backoff = Duration::from_millis(250);
    loop {
        let synced = sync(&state, &pods, &secrets, &selector, &errors, request_timeout).await;
        lock(&state).synced = false;
        match synced {
            // It was in sync for a while: try again soon.
            Ok(()) => backoff = Duration::from_millis(250),
            Err(e) => tracing::debug!(error = %e, "sandbox mirror out of sync, retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn bounded<T>(
    op: &str,
    errors: &Errors,
    timeout: Duration,
    fut: impl Future<Output = kube::Result<T>>,
) -> Result<T, DriverError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| errors.map(op, Fail::Kube(e))),
        Err(_) => Err(errors.map(op, Fail::Timeout)),
    }
}

/// One list and the watch after it; returns when the watch fails.
async fn sync(
    state: &Mutex<State>,
    pods: &Api<Pod>,
    secrets: &Api<Secret>,
    selector: &str,
    errors: &Errors,
    request_timeout: Duration,
) -> Result<(), DriverError> {
    let lp = ListParams::default().labels(selector);
    let pod_list = bounded("list pods", errors, request_timeout, pods.list(&lp)).await?;
    let secret_list = bounded("list secrets", errors, request_timeout, secrets.list(&lp)).await?;
    let pods_rv = pod_list
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let secrets_rv = secret_list
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    {
        let mut st = lock(state);
        st.pods = pod_list
            .items
            .into_iter()
            .map(|p| (p.name_any(), p))
            .collect();
        st.secrets = secret_list
            .items
            .into_iter()
            .map(|s| (s.name_any(), s))
            .collect();
        st.gone.clear();
        st.synced = true;
    }
    let mut events = futures::stream::select(
        rewatch(pods.clone(), selector.to_string(), pods_rv, errors.clone())
            .map(|r| r.map(|e| Seen::Pod(Box::new(e)))),
        rewatch(
            secrets.clone(),
            selector.to_string(),
            secrets_rv,
            errors.clone(),
        )
        .map(|r| r.map(|e| Seen::Secret(Box::new(e)))),
    )
    .boxed();
    while let Some(seen) = events.next().await {
        let mut st = lock(state);
        let st = &mut *st;
        match seen? {
            Seen::Pod(e) => match *e {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => put(&mut st.pods, &st.gone, p),
                WatchEvent::Deleted(p) => {
                    if let Some(uid) = p.uid() {
                        st.gone.remove(&uid);
                    }
                    // Only if it is this one (not a newer Pod of the same name).
                    if st.pods.get(&p.name_any()).and_then(|q| q.uid()) == p.uid() {
                        st.pods.remove(&p.name_any());
                    }
                }
                _ => {}
            },
            Seen::Secret(e) => match *e {
                WatchEvent::Added(s) | WatchEvent::Modified(s) => put(&mut st.secrets, &st.gone, s),
                WatchEvent::Deleted(s) => {
                    if let Some(uid) = s.uid() {
                        st.gone.remove(&uid);
                    }
                    if st.secrets.get(&s.name_any()).and_then(|q| q.uid()) == s.uid() {
                        st.secrets.remove(&s.name_any());
                    }
                }
                _ => {}
            },
        }
    }
    Ok(())
}
