//! The engine path (placeholder, filled in below).
use super::overlay::{Args, Binary, Outcome};
use anyhow::Result;

/// Overlay through a Docker engine.
pub async fn overlay(_args: &Args, _binaries: &[Binary]) -> Result<Vec<Outcome>> {
    anyhow::bail!("--engine is not implemented yet")
}
/// Load a docker-archive into the engine; returns the image id.
pub async fn load(_file: &std::path::Path) -> Result<String> {
    anyhow::bail!("--load is not implemented yet")
}
/// Run `mosn --version` in `image`.
pub async fn smoke(_image: &str) -> Result<()> {
    anyhow::bail!("--smoke is not implemented yet")
}
