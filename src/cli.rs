//! The command-line surface: one clap subcommand per module.

use clap::{Parser, Subcommand};

/// Build the mosn sidecar, pack it for Istio's build and turn it into proxyv2 images.
#[derive(Debug, Parser)]
#[command(name = "mosnctl", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only print errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand, each owned by its module.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the mosn proxy for one or more targets (static linux binaries by default).
    Build(crate::build::Args),
    /// Pack built binaries into mosn.tar.gz, mosn-centos.tar.gz and mosn-macos.tar.gz.
    Pack(crate::pack::Args),
    /// Serve packed tarballs over HTTP for Istio's `bin/init.sh`.
    ServeArtifacts(crate::serve::Args),
    /// Build, pack and serve in one step: the main job on a fresh machine.
    Artifacts(crate::serve::ArtifactsArgs),
    /// Report the architecture, glibc needs and dynamic loader of a binary.
    Inspect(crate::elf::Args),
    /// Add the mosn binary to a proxyv2 base image (daemonless by default).
    Overlay(crate::image::overlay::Args),
    /// Print the istioctl flags (or IstioOperator YAML) that install Istio with a mosn image.
    IstioArgs(crate::image::istio::ArgsArgs),
    /// Rewrite `istioctl kube-inject` output so sidecars run /usr/local/bin/mosn.
    InjectRewrite(crate::image::istio::RewriteArgs),
    /// Apply (or check, or revert) the wasm-disable patch on an istio/istio checkout.
    PatchIstio(crate::istio::PatchArgs),
    /// Build a proxyv2 image with mosn through Istio's own `make docker.proxyv2` (Istio 1.10).
    BuildImage(crate::istio::BuildImageArgs),
    /// Replay an Envoy config_dump over ADS (xDS server) and write bootstraps that use it.
    Xds(crate::xds::Args),
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build(args) => crate::build::run(args).map(|_| ()),
        Command::Pack(args) => crate::pack::run(args).map(|_| ()),
        Command::ServeArtifacts(args) => crate::serve::run(args),
        Command::Artifacts(args) => crate::serve::run_artifacts(args),
        Command::Inspect(args) => crate::elf::run(args),
        Command::Overlay(args) => crate::image::overlay::run(args),
        Command::IstioArgs(args) => crate::image::istio::run_args(args),
        Command::InjectRewrite(args) => crate::image::istio::run_rewrite(args),
        Command::PatchIstio(args) => crate::istio::run_patch(args),
        Command::BuildImage(args) => crate::istio::run_build_image(args),
        Command::Xds(args) => crate::xds::run(args),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
