//! `mosnctl pack`.
/// Arguments.
#[derive(Debug, clap::Args)]
pub struct Args {}
/// Run.
pub fn run(_: Args) -> anyhow::Result<()> {
    Ok(())
}
