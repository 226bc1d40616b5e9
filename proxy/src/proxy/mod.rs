//! The data path: listeners, the HTTP connection manager and the router.

pub mod cors;
pub mod fault;
pub mod hcm;
