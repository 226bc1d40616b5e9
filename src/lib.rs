//! mosnctl: build the bundled `mosn` proxy, pack it the way Istio's build expects, serve it,
//! and turn it into Istio `proxyv2` sidecar images.
//!
//! `main.rs` only parses the command line; every subcommand lives in its own module here so
//! that tests can call the same functions the binary does.

pub mod build;
pub mod cli;
pub mod elf;
pub mod fsutil;
pub mod gzip;
pub mod image;
pub mod istio;
pub mod pack;
pub mod serve;
pub mod targets;
pub mod ui;
pub mod xds;
