//! Envoy's command line, as pilot-agent 1.10 and current Istio pass it, plus `mosn start`.
//!
//! Envoy uses TCLAP; we keep a table of its flags with their arity so that `--flag v`,
//! `--flag=v` and short forms parse, and so that an unknown flag only warns (MOSN 1.0 exited 0
//! on unknown flags, which made pods crash-loop under newer pilot-agents).

use std::path::PathBuf;

/// Parsed command line. Fields mirror Envoy's `OptionsImpl`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-c/--config-path`.
    pub config_path: Option<PathBuf>,
    /// `--config-yaml`, merged over the file.
    pub config_yaml: Option<String>,
    /// `--mode serve|validate|init_only`.
    pub mode: Mode,
    /// `--concurrency`: data-plane worker threads (Envoy defaults to the CPU count).
    pub concurrency: Option<usize>,
    /// `-l/--log-level`.
    pub log_level: Option<String>,
    /// `--component-log-level comp:level,...`.
    pub component_log_level: Option<String>,
    /// `--drain-time-s`.
    pub drain_time_s: Option<u64>,
    /// `--service-cluster` overrides `node.cluster`.
    pub service_cluster: Option<String>,
    /// `--service-node` overrides `node.id`.
    pub service_node: Option<String>,
    /// `--local-address-ip-version v4|v6`.
    pub ip_version_v6: bool,
    /// `--allow-unknown-static-fields`.
    pub allow_unknown_fields: bool,
    /// `--version` was given.
    pub version: bool,
    /// `-h/--help` was given.
    pub help: bool,
    /// Warnings to print once logging is up (unknown flags).
    pub warnings: Vec<String>,
}

/// What the process should do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Load the config and run.
    #[default]
    Serve,
    /// Load the config, report, exit.
    Validate,
    /// Initialise everything, then exit (Envoy's `init_only`).
    InitOnly,
}

/// Whether an Envoy flag takes a value. Flags not listed are unknown.
fn arity(flag: &str) -> Option<bool> {
    const VALUED: &[&str] = &[
        "c",
        "config-path",
        "config-yaml",
        "mode",
        "concurrency",
        "l",
        "log-level",
        "component-log-level",
        "log-format",
        "log-path",
        "drain-time-s",
        "drain-strategy",
        "parent-shutdown-time-s",
        "restart-epoch",
        "service-cluster",
        "service-node",
        "service-zone",
        "local-address-ip-version",
        "bootstrap-version",
        "base-id",
        "base-id-path",
        "file-flush-interval-msec",
        "file-flush-min-size-kb",
        "socket-path",
        "socket-mode",
        "admin-address-path",
        "stats-tag",
        "disable-extensions",
        "log-format-prefix-with-location",
        "cpuset-threads",
    ];
    const SWITCHES: &[&str] = &[
        "disable-hot-restart",
        "allow-unknown-static-fields",
        "reject-unknown-dynamic-fields",
        "ignore-unknown-dynamic-fields",
        "use-dynamic-base-id",
        "enable-mutex-tracing",
        "enable-fine-grain-logging",
        "log-format-escaped",
        "enable-core-dump",
        "skip-deprecated-logs",
        "skip-hot-restart-on-no-parent",
        "skip-hot-restart-parent-stats",
        "hot-restart-version",
        "version",
        "h",
        "help",
    ];
    if VALUED.contains(&flag) {
        Some(true)
    } else if SWITCHES.contains(&flag) {
        Some(false)
    } else {
        None
    }
}

/// Parse Envoy's arguments (without argv\[0\]). Errors are real errors (bad values).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut args: Vec<String> = args.into_iter().collect();
    // `mosn start -c FILE` (MOSN's CLI) and `mosn version`.
    match args.first().map(String::as_str) {
        Some("start") => {
            args.remove(0);
        }
        Some("version") => args[0] = "--version".into(),
        _ => {}
    }
    let mut o = Options::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(stripped) = arg.strip_prefix('-') else {
            o.warnings
                .push(format!("ignoring unexpected argument {arg:?}"));
            continue;
        };
        let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (stripped.to_string(), None),
        };
        let value = match arity(&name) {
            Some(true) => match inline {
                Some(v) => v,
                None if i < args.len() => {
                    i += 1;
                    args[i - 1].clone()
                }
                None => return Err(format!("flag --{name} needs a value")),
            },
            Some(false) => inline.unwrap_or_default(),
            None => {
                // Envoy takes no positional arguments, so a following non-flag word can only
                // be this unknown flag's value: swallow it so it is not misread.
                if inline.is_none() && i < args.len() && !args[i].starts_with('-') {
                    i += 1;
                }
                o.warnings.push(format!("ignoring unknown flag {arg:?}"));
                continue;
            }
        };
        match name.as_str() {
            "c" | "config-path" => o.config_path = Some(PathBuf::from(value)),
            "config-yaml" => o.config_yaml = Some(value),
            "mode" => {
                o.mode = match value.as_str() {
                    "serve" => Mode::Serve,
                    "validate" => Mode::Validate,
                    "init_only" => Mode::InitOnly,
                    m => return Err(format!("unknown --mode {m:?} (serve, validate, init_only)")),
                }
            }
            "concurrency" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("--concurrency wants a number, got {value:?}"))?;
                o.concurrency = Some(n);
            }
            "l" | "log-level" => o.log_level = Some(value),
            "component-log-level" => o.component_log_level = Some(value),
            "drain-time-s" => {
                o.drain_time_s = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--drain-time-s wants seconds, got {value:?}"))?,
                )
            }
            "service-cluster" => o.service_cluster = Some(value),
            "service-node" => o.service_node = Some(value),
            "local-address-ip-version" => match value.as_str() {
                "v4" => o.ip_version_v6 = false,
                "v6" => o.ip_version_v6 = true,
                v => {
                    return Err(format!(
                        "--local-address-ip-version must be v4 or v6, got {v:?}"
                    ))
                }
            },
            "allow-unknown-static-fields" => o.allow_unknown_fields = true,
            "version" => o.version = true,
            "h" | "help" => o.help = true,
            // Accepted for compatibility; hot restart, file flushing and log formats do not apply.
            _ => {}
        }
    }
    Ok(o)
}

const USAGE: &str =
    "usage: mosn [start] -c <bootstrap.json|yaml> [--mode serve|validate|init_only] \
[--concurrency N] [-l LEVEL] [--component-log-level comp:level,...] [--drain-time-s S] \
[--config-yaml YAML] [--service-cluster C] [--service-node N] [--version]\n\
Envoy's other flags are accepted; unknown flags are ignored with a warning.";

/// Entry point of the binary; returns the process exit code.
pub fn run(args: Vec<String>) -> i32 {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mosn: {e}\n{USAGE}");
            return 1;
        }
    };
    if opts.version {
        println!("{}", crate::version_line());
        return 0;
    }
    if opts.help {
        println!("{}\n{USAGE}", crate::version_line());
        return 0;
    }
    crate::logging::init(
        opts.log_level.as_deref(),
        opts.component_log_level.as_deref(),
    );
    for w in &opts.warnings {
        tracing::warn!("{w}");
    }
    // A setting that sessions 13-19 read: say that it does nothing now rather than ignore it.
    if std::env::var_os("MOSN_IDLE_SPIN_US").is_some() {
        tracing::warn!(
            "MOSN_IDLE_SPIN_US is no longer read (mosn does not spin before it sleeps); remove it"
        );
    }
    let boot = match crate::config::load(&opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mosn: invalid configuration: {e}");
            return 1;
        }
    };
    let stats = crate::stats::Stats::new();
    let snapshot = match crate::config::Snapshot::build(&boot, &stats) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mosn: invalid configuration: {e}");
            return 1;
        }
    };
    if opts.mode == Mode::Validate {
        println!(
            "configuration '{}' OK",
            opts.config_path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        return 0;
    }
    crate::server::run(opts, boot, snapshot, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Options, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn pilot_agent_1_10_command_line() {
        let o = p("-c etc/istio/proxy/envoy-rev0.json --restart-epoch 0 --drain-time-s 45 \
            --drain-strategy immediate --parent-shutdown-time-s 60 --service-cluster productpage.default \
            --service-node sidecar~10.1.2.3~pp.default~default.svc.cluster.local \
            --local-address-ip-version v4 --bootstrap-version 3 --disable-hot-restart \
            --log-format %Y-%m-%dT%T.%fZ -l warning --component-log-level misc:error --concurrency 2")
        .unwrap();
        assert_eq!(
            o.config_path.unwrap().to_str(),
            Some("etc/istio/proxy/envoy-rev0.json")
        );
        assert_eq!(o.drain_time_s, Some(45));
        assert_eq!(o.concurrency, Some(2));
        assert_eq!(o.log_level.as_deref(), Some("warning"));
        assert_eq!(o.component_log_level.as_deref(), Some("misc:error"));
        assert_eq!(o.service_cluster.as_deref(), Some("productpage.default"));
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    }

    #[test]
    fn current_istio_command_line_and_unknown_flags() {
        let o = p(
            "-c etc/istio/proxy/envoy-rev.json --drain-time-s=45 --drain-strategy immediate \
            --local-address-ip-version v6 --file-flush-interval-msec 1000 --disable-hot-restart \
            --allow-unknown-static-fields --skip-deprecated-logs -l warning --concurrency=2 \
            --brand-new-flag value --other-new-switch --x=1",
        )
        .unwrap();
        assert!(o.ip_version_v6 && o.allow_unknown_fields);
        assert_eq!(o.concurrency, Some(2));
        assert_eq!(o.warnings.len(), 3, "{:?}", o.warnings);
    }

    #[test]
    fn mosn_start_and_bad_values() {
        let o = p("start -c /tmp/x.yaml --mode validate").unwrap();
        assert_eq!(o.mode, Mode::Validate);
        assert!(p("--concurrency two").is_err());
        assert!(p("--mode nope").is_err());
        assert!(p("-c").is_err());
        assert!(p("version").unwrap().version);
    }
}
