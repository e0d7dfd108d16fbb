//! Connecting to the resolved gateway (owned by the transport work).
