//! `mosn`: a Rust sidecar proxy that stands where Envoy stands in an Istio sidecar.
//!
//! The binary (`main.rs`) only calls [`cli::run`]. Everything else lives here so that tests can
//! drive the pieces directly:
//! - [`cli`] parses Envoy's command line (and `mosn start`),
//! - [`config`] decodes the v3 bootstrap into envoy-types protos and builds the runtime
//!   [`config::Snapshot`], which the data path reads through an atomically swappable store,
//! - [`route`], [`cluster`] and [`lb`] implement Envoy's routing, upstream and balancing semantics,
//! - [`proxy`] is the HTTP connection manager and router on top of hyper,
//! - [`admin`] and [`stats`] serve the admin API that pilot-agent and istioctl use,
//! - [`server`] ties listeners, admin and lifecycle (drain, signals) together.
//!
//! Runtime: one multi-threaded Tokio runtime with `--concurrency` workers runs everything
//! (admin, listeners, upstream connections, DNS refresh); the main thread only blocks on it.
//! No port is fixed: the admin and listener addresses come from the bootstrap.
//!
//! Config flow: bootstrap → [`config::Snapshot`] (compiled routes, clusters with their pools,
//! listeners) → [`config::ConfigStore`]. Each request loads the current snapshot once and
//! keeps that `Arc` to its end, so a swap never changes config under an in-flight request.

// Istio 1.10 emits deprecated Envoy fields (exact_match, deprecated_v1, total_weight, ...);
// reading them is the point, so the deprecation warnings of the generated protos are noise.
#![allow(deprecated)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod header_pool;
pub mod http2;
pub mod lb;
pub mod listener;
pub mod logging;
pub mod proxy;
pub mod rbac;
pub mod route;
pub mod server;
pub mod stats;
pub mod tick_batch;
pub mod tls;
pub mod wire;
pub mod xds;

/// The one-line version string: crate version, git commit and target triple.
///
/// Other tooling greps for the `mosn version <ver> (commit <c>, target <t>)` shape; keep it.
pub fn version_line() -> String {
    format!(
        "mosn version {} (commit {}, target {})",
        env!("CARGO_PKG_VERSION"),
        env!("MOSN_GIT_COMMIT"),
        env!("MOSN_TARGET")
    )
}
