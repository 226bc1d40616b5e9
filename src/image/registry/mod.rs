//! A thin client for the OCI distribution API: just what overlaying needs (manifests, blob
//! existence, cross-repository mounts, monolithic uploads), with docker-compatible auth.

pub mod auth;
pub mod client;

pub use client::{ClientOptions, MountOutcome, Registry};
