//! The gateway's one error type, and its mapping to gRPC status codes (here and nowhere
//! else).

use tonic::Status;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    Transport(#[from] openshell_transport::TransportError),
    #[error(transparent)]
    Fs(#[from] openshell_pki::fs::FsError),
    #[error(transparent)]
    Store(#[from] openshell_store::StoreError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("cannot listen for health checks on {addr}: {source} (choose another --health-listen)")]
    HealthBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Precondition(String),
    /// The caller's roles lack a right (the text names it: "role viewer cannot ...").
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Driver(#[from] openshell_drivers::DriverError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Status {
        use openshell_store::StoreError as S;
        match e {
            GatewayError::NotFound(what) => Status::not_found(format!("{what} not found")),
            GatewayError::InvalidArgument(m) => Status::invalid_argument(m),
            GatewayError::Precondition(m) => Status::failed_precondition(m),
            GatewayError::Forbidden(m) => Status::permission_denied(m),
            GatewayError::Driver(d) => {
                use openshell_drivers::DriverError as D;
                let text = d.to_string();
                match d {
                    D::ImageNotFound { .. } | D::InvalidName { .. } | D::InvalidSpec(_) => {
                        Status::invalid_argument(text)
                    }
                    D::AlreadyExists { .. } => Status::already_exists(text),
                    D::NotFound { .. } => Status::not_found(text),
                    D::RuntimeUnavailable { .. } => Status::unavailable(text),
                    _ => Status::internal(text),
                }
            }
            GatewayError::Store(s) => match s {
                S::NotFound { .. } => Status::not_found(s.to_string()),
                S::AlreadyExists { .. } => Status::already_exists(s.to_string()),
                S::Conflict { .. } => Status::aborted(s.to_string()),
                S::InvalidArgument(_) => Status::invalid_argument(s.to_string()),
                other => {
                    tracing::error!(error = %other, "store failure");
                    Status::unavailable(format!("the gateway's database failed: {other}"))
                }
            },
            other => {
                tracing::error!(error = %other, "request failed");
                Status::internal(other.to_string())
            }
        }
    }
}
