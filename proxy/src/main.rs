//! `mosn`: the sidecar proxy binary. Istio's pilot-agent launches it with Envoy's command line.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "version") {
        println!("{}", version_line());
        return;
    }
    eprintln!("mosn: only --version is implemented so far");
    std::process::exit(1);
}

/// The one-line version string: crate version, git commit and target triple.
fn version_line() -> String {
    format!(
        "mosn version {} (commit {}, target {})",
        env!("CARGO_PKG_VERSION"),
        env!("MOSN_GIT_COMMIT"),
        env!("MOSN_TARGET")
    )
}
