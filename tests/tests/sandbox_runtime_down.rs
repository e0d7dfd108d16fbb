//! The container runtime going away under a running gateway (here the Podman API service,
//! which the test owns): requests fail with an error naming the runtime, nothing is
//! half-created, records stay, and everything works again when the runtime returns.

use std::time::Duration;

use openshell_tests::{SandboxEnv, assert_eventually};

#[test]
fn podman_service_down_and_back() {
    let mut s = SandboxEnv::podman();
    let r = s.u.run(&["sandbox", "create", "--name", "keep"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, s.logs());

    s.podman.as_mut().unwrap().pause();

    // A create while the runtime is down: a clear error, no record left behind.
    let r = s.u.run(&["sandbox", "create", "--name", "during"]).fails();
    assert!(
        r.stderr.contains("podman") || r.stderr.contains("runtime"),
        "{}",
        r.stderr
    );
    let r = s.u.run(&["sandbox", "get", "during"]).fails();
    assert!(r.stderr.contains("not found"), "{}", r.stderr);

    // The existing record is intact and says why it cannot be observed.
    let list = s.u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["name"], "keep");
    assert_eq!(items[0]["phase"], "Error", "{list}");
    assert!(
        items[0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{list}"
    );
    // Stop needs the runtime too: refused with the reason, record unchanged.
    let r = s.u.run(&["sandbox", "stop", "keep"]).fails();
    assert!(!r.stderr.is_empty());

    // The runtime returns: the sandbox (its container kept running) is Ready again, and
    // new sandboxes can be made.
    s.podman.as_mut().unwrap().resume();
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("keep") == "Ready",
        "not Ready after the runtime returned: {}",
        s.phase("keep")
    );
    s.u.run(&["sandbox", "create", "--name", "after"]).ok();
    s.u.run(&["sandbox", "delete", "--all"]).ok();
    assert!(s.containers().is_empty(), "{:?}", s.containers());
}
