//! `mosn`: the sidecar proxy binary. Istio's pilot-agent launches it with Envoy's command line.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(mosn::cli::run(args));
}
