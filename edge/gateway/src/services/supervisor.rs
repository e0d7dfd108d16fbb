//! `openshell.v1.Supervisor`: callbacks from in-sandbox supervisors. No compute driver is
//! compiled into this build yet, so every method answers UNIMPLEMENTED (the generated
//! defaults); the service is registered so authorization (sandbox credentials only) is
//! already enforced on its paths.

use openshell_proto::supervisor_server::Supervisor;

#[derive(Debug, Default)]
pub struct SupervisorService;

#[tonic::async_trait]
impl Supervisor for SupervisorService {}
