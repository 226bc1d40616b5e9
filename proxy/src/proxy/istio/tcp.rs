//! Istio's TCP telemetry, for a tcp_proxy chain that has the `istio.stats` network filter
//! (Bookinfo's ratings-v2 calling MongoDB; any database or other TCP service in the mesh).
//! As Istio's stats filter does for a connection:
//! - `istio_tcp_connections_opened_total` once the upstream is known (at the end, for a
//!   connection that never reached one),
//! - `istio_tcp_sent_bytes_total` (to the downstream) and `istio_tcp_received_bytes_total`
//!   (from it) every `tcp_reporting_duration` (5 s by default) and at the end,
//! - `istio_tcp_connections_closed_total` at the end,
//!
//! under the HTTP labels without `response_code` and `grpc_response_status`, with
//! `request_protocol="tcp"`.
//!
//! The peer's workload comes from Istio's TCP metadata exchange ([`super::tcp_mx`]) where it
//! runs; otherwise from Istio's fallbacks: outbound, the endpoint's `istio.workload`
//! metadata; inbound, none (`unknown`). Principals come from the certificates: the client's
//! and this side's inbound, the upstream connection's outbound.

use super::labels::{flags, security, with_sides, Series, Who};
use super::IstioConfig;
use crate::config::ConfigStore;
use std::sync::Arc;
use std::time::Duration;

/// A tcp_proxy chain's Istio stats filter.
#[derive(Debug, Clone)]
pub struct TcpIstio {
    /// The listener's direction, as for HTTP.
    pub cfg: IstioConfig,
    /// `tcp_reporting_duration`: how often the bytes of an open connection are counted.
    pub every: Duration,
}

/// Later Istio's default `tcp_reporting_duration` (its native stats filter).
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);

/// Istio 1.10's default (its Wasm stats plugin).
pub const WASM_DEFAULT_EVERY: Duration = Duration::from_secs(15);

/// How the connection went, when it is first reported.
#[derive(Debug, Default)]
pub struct Opened<'a> {
    /// The cluster it went to.
    pub cluster: Option<&'a str>,
    /// The upstream endpoint's `istio.workload` metadata.
    pub endpoint: Option<&'a str>,
    /// The other side's workload, from the TCP metadata exchange.
    pub peer: Option<&'a super::peer::Workload>,
    /// (source, destination) principals: URI SANs, empty when unknown.
    pub principals: (&'a str, &'a str),
    /// Response flags, comma-separated, empty for none.
    pub flags: &'a str,
}

/// One connection's report: its label set, and the bytes counted so far.
#[derive(Debug)]
pub struct TcpReport {
    series: Option<Arc<Series>>,
    sent: u64,
    received: u64,
}

impl TcpIstio {
    /// Count the connection as opened, under the labels `o` gives.
    pub fn open(&self, store: &ConfigStore, o: Opened<'_>) -> TcpReport {
        let who = Who {
            peer: o.peer,
            cluster: o.cluster,
            endpoint: o.endpoint,
            principals: o.principals,
            ..Default::default()
        };
        // As Istio: mutual TLS when both sides of an inbound connection have a SPIFFE name;
        // the client side does not say.
        let mtls = self
            .cfg
            .inbound()
            .then_some(!o.principals.0.is_empty() && !o.principals.1.is_empty());
        let tail = [
            ("request_protocol", "tcp"),
            ("response_flags", flags(o.flags)),
            ("connection_security_policy", security(mtls)),
        ];
        let series = with_sides(&self.cfg, store, who, |sides| {
            let values: [(&str, &str); 23] =
                std::array::from_fn(|i| if i < 20 { sides[i] } else { tail[i - 20] });
            store.istio_local().series(&values, || {
                let stats = &store.tracing_env().stats;
                let c = |family| stats.labeled(family, &values, crate::stats::Kind::Counter);
                Series::Tcp {
                    opened: c("istio_tcp_connections_opened_total"),
                    closed: c("istio_tcp_connections_closed_total"),
                    sent: c("istio_tcp_sent_bytes_total"),
                    received: c("istio_tcp_received_bytes_total"),
                }
            })
        });
        if let Some(Series::Tcp { opened, .. }) = series.as_deref() {
            opened.inc();
        }
        TcpReport {
            series,
            sent: 0,
            received: 0,
        }
    }
}

impl TcpReport {
    /// Count the bytes since the last report, from the connection's totals.
    pub fn bytes(&mut self, sent: u64, received: u64) {
        if let Some(Series::Tcp {
            sent: s,
            received: r,
            ..
        }) = self.series.as_deref()
        {
            s.add(sent.saturating_sub(self.sent));
            r.add(received.saturating_sub(self.received));
        }
        self.sent = self.sent.max(sent);
        self.received = self.received.max(received);
    }

    /// The last bytes, and the connection as closed.
    pub fn close(mut self, sent: u64, received: u64) {
        self.bytes(sent, received);
        if let Some(Series::Tcp { closed, .. }) = self.series.as_deref() {
            closed.inc();
        }
    }
}

/// `tcp_reporting_duration` from an `istio.stats` network filter's config: later Istio's
/// `stats.PluginConfig` (binary, or parked from JSON), or Istio's Wasm filter (in a
/// TypedStruct or not) whose `configuration` is a JSON string. When unset or unreadable, the
/// default of that form: [`WASM_DEFAULT_EVERY`] for the Wasm plugin, [`DEFAULT_EVERY`]
/// otherwise. Zero turns the periodic report off, as in Istio.
pub fn reporting_every(any: &envoy_types::pb::google::protobuf::Any) -> Duration {
    use prost::Message;
    /// The one field of `stats.PluginConfig` read here (prost skips the others).
    #[derive(Clone, PartialEq, Message)]
    struct PluginConfig {
        #[prost(message, optional, tag = "7")]
        tcp_reporting_duration: Option<envoy_types::pb::google::protobuf::Duration>,
    }
    if any.type_url.ends_with("/stats.PluginConfig") {
        let c = PluginConfig::decode(any.value.as_slice()).unwrap_or_default();
        let d = c.tcp_reporting_duration.as_ref();
        return d.map_or(DEFAULT_EVERY, crate::config::duration);
    }
    let Some((wasm, settings)) = settings(any) else {
        return DEFAULT_EVERY;
    };
    let set = settings
        .get("tcp_reporting_duration")
        .and_then(|d| d.as_str());
    set.and_then(text_duration).unwrap_or(match wasm {
        true => WASM_DEFAULT_EVERY,
        false => DEFAULT_EVERY,
    })
}

/// Any other form of the config: whether it is the Wasm plugin, and its settings as JSON
/// (a Wasm `configuration` string parsed, else the PluginConfig's fields).
fn settings(any: &envoy_types::pb::google::protobuf::Any) -> Option<(bool, serde_json::Value)> {
    use crate::config::decode;
    use envoy_types::pb::google::protobuf::{StringValue, Struct};
    use prost::Message;
    const WASM: &str = "envoy.extensions.filters.network.wasm.v3.Wasm";
    /// `udpa.type.v1.TypedStruct` and `xds.type.v3.TypedStruct` alike.
    #[derive(Clone, PartialEq, Message)]
    struct TypedStruct {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Struct>,
    }
    // The config's type and its fields as JSON.
    let (ty, json) = if any.type_url.ends_with(WASM) {
        use envoy_types::pb::envoy::extensions::filters::network::wasm::v3::Wasm;
        let conf = Wasm::decode(any.value.as_slice())
            .ok()?
            .config?
            .configuration?;
        let text = StringValue::decode(conf.value.as_slice()).ok()?.value;
        return Some((true, serde_json::from_str(&text).ok()?));
    } else if let Some(parked) = decode::parked_type(any) {
        // Parked from JSON: the whole object, a TypedStruct's `type_url` and `value` too.
        let mut j = struct_json(&Struct::decode(any.value.as_slice()).ok()?);
        match j
            .get("type_url")
            .and_then(|t| t.as_str())
            .map(str::to_string)
        {
            Some(t) if parked.ends_with(".TypedStruct") => (t, j["value"].take()),
            _ => (parked, j),
        }
    } else if any.type_url.ends_with(".TypedStruct") {
        let t = TypedStruct::decode(any.value.as_slice()).ok()?;
        (t.type_url, struct_json(&t.value?))
    } else {
        return None;
    };
    // 1.10's Wasm: `config.configuration` is a StringValue of the plugin's JSON.
    let plugin = json
        .pointer("/config/configuration/value")
        .and_then(|v| v.as_str())
        .and_then(|text| serde_json::from_str(text).ok());
    Some((ty.ends_with(WASM), plugin.unwrap_or(json)))
}

/// A `google.protobuf.Struct` as JSON.
fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
        match v.kind.as_ref() {
            Some(Kind::StringValue(s)) => s.clone().into(),
            Some(Kind::NumberValue(n)) => (*n).into(),
            Some(Kind::BoolValue(b)) => (*b).into(),
            Some(Kind::StructValue(s)) => struct_json(s),
            Some(Kind::ListValue(l)) => l.values.iter().map(value).collect(),
            Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        }
    }
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A duration as the stats plugins read it: proto3 JSON's `"1.5s"`, or absl's
/// `ParseDuration` forms (`"500ms"`, `"1m30s"`, units `ns us ms s m h`).
fn text_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&e| e > 0)?;
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use serde_json::json;

    /// An Any as the JSON loader hands it over (unknown types parked).
    fn loaded(v: serde_json::Value) -> Any {
        let mut v = json!({"name": "istio.stats", "typed_config": v});
        crate::config::decode::park_unknown_types(&mut v, &mut vec![]);
        let f: envoy_types::pb::envoy::config::listener::v3::Filter = crate::config::test_proto(v);
        match f.config_type {
            Some(
                envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a),
            ) => a,
            _ => panic!("no typed_config"),
        }
    }

    #[test]
    fn reporting_duration_in_each_form() {
        // Istio 1.10's Wasm filter, as its EnvoyFilter writes it.
        let wasm = |conf: &str| {
            loaded(
                json!({"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                "type_url": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "value": {"config": {"root_id": "stats_outbound",
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": conf}}}}),
            )
        };
        let d = r#"{"debug": "false", "stat_prefix": "istio", "tcp_reporting_duration": "1s"}"#;
        assert_eq!(reporting_every(&wasm(d)), Duration::from_secs(1));
        assert_eq!(reporting_every(&wasm("{}")), WASM_DEFAULT_EVERY);
        let absl = r#"{"tcp_reporting_duration": "1m30s"}"#;
        assert_eq!(reporting_every(&wasm(absl)), Duration::from_secs(90));
        let ms = r#"{"tcp_reporting_duration": "250ms"}"#;
        assert_eq!(reporting_every(&wasm(ms)), Duration::from_millis(250));
        let bad = r#"{"tcp_reporting_duration": "soon"}"#;
        assert_eq!(reporting_every(&wasm(bad)), WASM_DEFAULT_EVERY);
        // Later Istio's PluginConfig, in JSON and as istiod sends it.
        let json_form = loaded(json!({"@type": "type.googleapis.com/stats.PluginConfig",
            "tcp_reporting_duration": "0.5s"}));
        assert_eq!(reporting_every(&json_form), Duration::from_millis(500));
        // Field 7, a Duration of 15 s, and an unrelated field 1 before it.
        let binary = Any {
            type_url: "type.googleapis.com/stats.PluginConfig".into(),
            value: vec![0x08, 0x01, 0x3a, 0x02, 0x08, 0x0f],
        };
        assert_eq!(reporting_every(&binary), Duration::from_secs(15));
        let empty = Any {
            type_url: "type.googleapis.com/stats.PluginConfig".into(),
            value: vec![],
        };
        assert_eq!(reporting_every(&empty), DEFAULT_EVERY);
        // 1.10's TypedStruct as istiod sends it over xDS (binary, not parked).
        let plugin = r#"{"tcp_reporting_duration": "2s"}"#;
        let value = loaded(
            json!({"@type": "type.googleapis.com/google.protobuf.Struct",
            "value": {"config": {"configuration": {"value": plugin}}}}),
        );
        let mut typed = vec![0x0a, 4];
        typed.extend_from_slice(b"wasm");
        typed.push(0x12);
        typed.push(value.value.len() as u8);
        typed.extend_from_slice(&value.value);
        let binary = Any {
            type_url: "type.googleapis.com/udpa.type.v1.TypedStruct".into(),
            value: typed,
        };
        assert_eq!(reporting_every(&binary), Duration::from_secs(2));
    }
}
