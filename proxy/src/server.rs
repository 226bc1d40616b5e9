//! Process lifecycle: runtime, listeners, admin, drain and signals.

use crate::cli::Options;
use crate::config::{LoadedBootstrap, Snapshot};
use crate::stats::Stats;
use std::sync::Arc;

/// Run the proxy until it is told to stop; returns the exit code.
pub fn run(_opts: Options, _boot: LoadedBootstrap, _snap: Snapshot, _stats: Arc<Stats>) -> i32 {
    eprintln!("mosn: serving is not implemented yet");
    1
}
