//! `mosnctl serve-artifacts`.
/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}
/// Arguments.
#[derive(Debug, clap::Args)]
pub struct ArtifactsArgs {}
/// Run.
pub fn run(_: Args) -> anyhow::Result<()> {
    Ok(())
}
/// Run.
pub fn run_artifacts(_: ArtifactsArgs) -> anyhow::Result<()> {
    Ok(())
}
