//! Harness for the black-box tests in `tests/tests/`: they run the real binaries in temp
//! directories and assert on exit codes, output and files.

use std::path::PathBuf;

/// Path of a workspace binary (`target/<profile>/<name>`), found next to the running test
/// executable (`target/<profile>/deps/<test>`). Panics with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the running test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is not inside target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A loopback TCP port that is free right now (for services that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("cannot bind a loopback port")
        .local_addr()
        .expect("no local address")
        .port()
}

pub mod cli;
pub mod gateway;
pub mod kube;
pub mod nginx;
pub mod sandboxes;
pub mod testpki;

pub use cli::{CliUser, Run};
pub use gateway::Gateway;
pub use sandboxes::{Runtime, SandboxEnv};
pub use testpki::{ClientCreds, TestPki};
