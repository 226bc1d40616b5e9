//! Logging: Envoy's `-l`, `--component-log-level` and admin `/logging` mapped onto `tracing`.

use std::sync::OnceLock;
use tracing_subscriber::{reload, EnvFilter, Registry};

type Handle = reload::Handle<EnvFilter, Registry>;
static HANDLE: OnceLock<Handle> = OnceLock::new();

/// Map an Envoy (spdlog) level name to a `tracing` level directive.
pub fn map_level(level: &str) -> Option<&'static str> {
    Some(match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "err" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// Envoy component names that correspond to one of our modules.
fn component_target(component: &str) -> Option<&'static str> {
    Some(match component {
        "admin" => "mosn::admin",
        "config" | "runtime" => "mosn::config",
        "upstream" | "pool" | "dns" | "hc" => "mosn::cluster",
        "router" | "http" | "http2" | "connection" | "filter" => "mosn::proxy",
        "main" | "init" => "mosn::server",
        _ => return None,
    })
}

/// Build the filter directives from `-l` and `--component-log-level`.
pub fn directives(level: Option<&str>, components: Option<&str>) -> String {
    let base = level.and_then(map_level).unwrap_or("info");
    let mut out = vec![base.to_string()];
    for part in components
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.is_empty())
    {
        if let Some((comp, lvl)) = part.split_once(':') {
            if let (Some(t), Some(l)) = (component_target(comp.trim()), map_level(lvl)) {
                out.push(format!("{t}={l}"));
            }
        }
    }
    out.join(",")
}

/// Install the global subscriber (stderr, like Envoy). Safe to call more than once.
pub fn init(level: Option<&str>, components: Option<&str>) {
    use tracing_subscriber::prelude::*;
    if HANDLE.get().is_some() {
        return;
    }
    let filter = EnvFilter::try_new(directives(level, components))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = HANDLE.set(handle);
    }
}

/// Change the level of everything at run time (admin `/logging?level=`).
pub fn set_level(level: &str) -> Result<(), String> {
    let l = map_level(level).ok_or_else(|| format!("unknown level {level:?}"))?;
    let handle = HANDLE.get().ok_or("logging not initialised")?;
    handle.reload(EnvFilter::new(l)).map_err(|e| e.to_string())
}

/// Change one component's level at run time (admin `/logging?upstream=debug`).
pub fn set_component(component: &str, level: &str) -> Result<(), String> {
    let l = map_level(level).ok_or_else(|| format!("unknown level {level:?}"))?;
    let t =
        component_target(component).ok_or_else(|| format!("unknown component {component:?}"))?;
    let handle = HANDLE.get().ok_or("logging not initialised")?;
    let directive = format!("{t}={l}").parse().map_err(|e| format!("{e}"))?;
    handle
        .modify(|f| {
            let old = std::mem::take(f);
            *f = old.add_directive(directive);
        })
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn envoy_levels_map() {
        assert_eq!(
            super::directives(Some("warning"), Some("misc:error,upstream:debug,bogus")),
            "warn,mosn::cluster=debug"
        );
        assert_eq!(super::directives(Some("critical"), None), "error");
        assert_eq!(super::directives(None, None), "info");
    }
}
