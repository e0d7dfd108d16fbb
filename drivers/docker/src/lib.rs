//! Compute backends that speak the Docker Engine API: [`DockerDriver`] (the Docker daemon)
//! and [`PodmanDriver`] (Podman's API service, which speaks the same API). Both implement
//! [`openshell_drivers::ComputeDriver`] through one shared engine; the backends differ only
//! in their defaults (socket, ulimits) and messages.
//!
//! Owns: turning a sandbox into a labelled container (`--cpu` as NanoCpus, `--memory` as
//! Memory, no restart policy, a network of its own, its credential as root-only files, all
//! capabilities but a few dropped: see [`isolation`]) and reading containers back.
//! Does not own: images (never pulled; build them locally, e.g. `scripts/build-sandbox-image`),
//! sandbox records, phases or restarts (the gateway's), or starting the runtime itself.

mod docker;
mod engine;
pub mod isolation;
mod lines;
mod podman;
mod raw;

pub use docker::{DOCKER_DEFAULT_SOCKET, DockerConfig, DockerDriver};
pub use engine::{ContainerSettings, Endpoint, Ulimit};
pub use podman::{PODMAN_SYSTEM_SOCKET, PodmanConfig, PodmanDriver};
