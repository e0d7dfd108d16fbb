//! The gRPC services the gateway serves.

pub mod diagnostics;
pub mod openshell;
pub mod owners;
pub mod providers;
pub mod sandboxes;
pub mod supervisor;
