//! Install helpers for after the image exists: the istioctl flags (or IstioOperator) that
//! install Istio with it, and rewriting `istioctl kube-inject` output.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::inject::{self, MOSN};
use super::reference::Reference;

/// `mosnctl istio-args`.
#[derive(Debug, Clone, clap::Args)]
pub struct ArgsArgs {
    /// The overlaid proxyv2 image (a full reference, e.g. docker.io/me/proxyv2:1.10.6-mosn).
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// `flags` for `istioctl install`/`manifest apply`, or an IstioOperator `operator` YAML.
    #[arg(long, value_enum, default_value_t = Format::Flags)]
    pub format: Format,
}

/// Output form of `istio-args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `--set ...` flags, one line.
    Flags,
    /// An IstioOperator manifest.
    Operator,
    /// `--set` flags for the istiod (istio-discovery) Helm chart.
    Helm,
}

/// `mosnctl inject-rewrite`.
#[derive(Debug, Clone, clap::Args)]
pub struct RewriteArgs {
    /// kube-inject output to rewrite; `-` or nothing reads stdin. The result goes to stdout.
    pub file: Option<PathBuf>,
    /// Fail when nothing needed rewriting (useful in CI, to catch a changed template).
    #[arg(long)]
    pub require_change: bool,
}

/// The image value for `values.global.proxy.image`: Istio uses a value containing `/` as
/// given and turns anything else into `<hub>/<value>:<tag>`, so always give a full one.
pub fn image_value(image: &str) -> Result<String> {
    let r = Reference::parse(image).context("--image must be an image reference")?;
    if image.contains('/') {
        Ok(image.to_string())
    } else {
        Ok(r.to_string())
    }
}

/// The `--set` flags.
pub fn flags(image: &str) -> Result<String> {
    Ok(format!(
        "--set values.global.proxy.image={} --set meshConfig.defaultConfig.binaryPath={MOSN}",
        image_value(image)?
    ))
}

/// The `--set` flags for the istiod Helm chart (its values have no `values.` prefix).
pub fn helm(image: &str) -> Result<String> {
    Ok(format!(
        "--set global.proxy.image={} --set meshConfig.defaultConfig.binaryPath={MOSN}",
        image_value(image)?
    ))
}

/// The IstioOperator manifest.
pub fn operator(image: &str) -> Result<String> {
    let image = image_value(image)?;
    Ok(format!(
        "# Install with: istioctl install -f <this file>  (Istio 1.10: istioctl manifest apply -f)\n\
         # Sidecars and gateways run {MOSN} from {image}; istio-init keeps the stock proxyv2\n\
         # (global.proxy_init.image). Existing pods keep their injected PROXY_CONFIG: restart\n\
         # or re-inject them.\n\
         apiVersion: install.istio.io/v1alpha1\n\
         kind: IstioOperator\n\
         spec:\n\
         \x20 meshConfig:\n\
         \x20   defaultConfig:\n\
         \x20     binaryPath: {MOSN}\n\
         \x20 values:\n\
         \x20   global:\n\
         \x20     proxy:\n\
         \x20       image: \"{image}\"\n"
    ))
}

/// `mosnctl istio-args`.
pub fn run_args(args: ArgsArgs) -> Result<()> {
    match args.format {
        Format::Flags => println!("{}", flags(&args.image)?),
        Format::Operator => print!("{}", operator(&args.image)?),
        Format::Helm => println!("{}", helm(&args.image)?),
    }
    Ok(())
}

/// `mosnctl inject-rewrite`.
pub fn run_rewrite(args: RewriteArgs) -> Result<()> {
    let mut text = String::new();
    match args.file.as_deref() {
        None => std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?,
        Some(p) if p.as_os_str() == "-" => std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?,
        Some(p) => std::fs::File::open(p)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", p.display()))?,
    };
    let (out, report) = inject::rewrite(&text)?;
    std::io::stdout().write_all(out.as_bytes())?;
    eprintln!(
        "rewrote {} place(s): {} PROXY_CONFIG binaryPath, {} proxy.istio.io/config annotation, {} container command/args",
        report.total(),
        report.proxy_config,
        report.annotations,
        report.args
    );
    if !report.untouched_lines.is_empty() {
        eprintln!(
            "left {} other mention(s) of {} alone (lines {}): not sidecar settings",
            report.untouched_lines.len(),
            inject::ENVOY,
            report
                .untouched_lines
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.require_change && report.total() == 0 {
        bail!(
            "nothing to rewrite: no sidecar names {}\n\n\
             help: the mesh config may already set binaryPath={MOSN}; check PROXY_CONFIG in the input",
            inject::ENVOY
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_use_full_references() {
        assert_eq!(
            flags("me/proxyv2:1.10.6-mosn").unwrap(),
            "--set values.global.proxy.image=me/proxyv2:1.10.6-mosn --set meshConfig.defaultConfig.binaryPath=/usr/local/bin/mosn"
        );
        assert_eq!(
            image_value("proxyv2:v1").unwrap(),
            "docker.io/library/proxyv2:v1"
        );
        assert!(flags("Bad Ref").is_err());
        assert!(operator("me/p:v").unwrap().contains("image: \"me/p:v\""));
        assert!(helm("me/p:v")
            .unwrap()
            .starts_with("--set global.proxy.image=me/p:v "));
    }
}
