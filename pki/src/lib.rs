//! placeholder
pub mod fs;
