//! Install helpers: the istioctl flags for a mosn image, and rewriting kube-inject output.

use anyhow::Result;

/// `mosnctl istio-args`.
#[derive(Debug, Clone, clap::Args)]
pub struct ArgsArgs {
    /// The overlaid proxyv2 image.
    #[arg(long, value_name = "REF")]
    pub image: String,
}

/// `mosnctl inject-rewrite`.
#[derive(Debug, Clone, clap::Args)]
pub struct RewriteArgs {
    /// kube-inject output; `-` or nothing reads stdin.
    pub file: Option<std::path::PathBuf>,
}

/// `mosnctl istio-args`.
pub fn run_args(_args: ArgsArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `mosnctl inject-rewrite`.
pub fn run_rewrite(_args: RewriteArgs) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
