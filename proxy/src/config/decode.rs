//! Proto3-JSON decoding of Envoy protos through envoy-types' own descriptor set.
//!
//! envoy-types has the prost structs but no JSON; prost-reflect reads proto3 JSON into a
//! `DynamicMessage` which we transcode into the typed struct. Any `@type` that the pool does not
//! know (Istio's TypedStruct-wrapped wasm, metadata exchange, alpn, authn, ...) would make
//! prost-reflect fail, so a pre-pass turns such an object into a `google.protobuf.Struct` Any that
//! remembers the original type URL; consumers see it as "skipped" and `/config_dump` restores it.
//! The helpers mosnctl uses too live in the `mosn-proto` crate; this module owns the pool.

use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use mosn_proto::{unpark, ORIGINAL_TYPE_FIELD, STRUCT_URL};

/// The descriptor pool of every Envoy v3 / xds / udpa type that envoy-types compiled.
///
/// Decoded it weighs tens of MB, far more than the rest of a sidecar, and it is only needed
/// while JSON is decoded or dumped. So it is cached while in use and dropped by
/// [`release_pool`] (after start-up) and by the reaper [`spawn_pool_reaper`] starts (after a
/// quiet minute); the next use decodes it again.
pub fn pool() -> Arc<DescriptorPool> {
    let mut cache = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, used)) = cache.as_mut() {
        *used = Instant::now();
        return p.clone();
    }
    let p = Arc::new(mosn_proto::decode_pool());
    *cache = Some((p.clone(), Instant::now()));
    p
}

static POOL: Mutex<Option<(Arc<DescriptorPool>, Instant)>> = Mutex::new(None);

/// Drop the cached pool (holders keep theirs) and return the memory to the OS.
pub fn release_pool() {
    let old = POOL.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(old);
    trim_memory();
}

/// Drop the pool whenever it has not been used for a minute (runs on the current runtime).
pub fn spawn_pool_reaper() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(20)).await;
            let idle = POOL
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|(_, used)| used.elapsed() > Duration::from_secs(60));
            if idle {
                release_pool();
            }
        }
    });
}

/// Give memory freed after start-up (the descriptor pool, JSON trees) back to the OS.
pub fn trim_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Replace every Any whose type is unknown with a parked Struct; returns the parked type URLs.
pub fn park_unknown_types(v: &mut Value, parked: &mut Vec<String>) {
    let from = parked.len();
    mosn_proto::park_unknown_types(&pool(), v, parked);
    for t in &parked[from..] {
        tracing::debug!(type_url = %t, "skipping typed_config of an unknown type");
    }
}

/// Decode proto3 JSON into the typed message `M`. With `strict`, unknown fields are errors.
pub fn from_json<M: prost::Message + prost::Name + Default>(
    value: &Value,
    strict: bool,
) -> Result<M, String> {
    mosn_proto::from_json(&pool(), value, strict)
}

/// Decode an Any's payload (`type_url` must match `M`).
pub fn unpack<M: prost::Message + prost::Name + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<M, String> {
    if any.type_url != M::type_url() {
        return Err(format!("expected {}, got {}", M::type_url(), any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("{}: {e}", M::full_name()))
}

/// Whether an Any is an unknown type that the loader parked (see module docs).
pub fn parked_type(any: &envoy_types::pb::google::protobuf::Any) -> Option<String> {
    if any.type_url != STRUCT_URL {
        return None;
    }
    let s: envoy_types::pb::google::protobuf::Struct =
        prost::Message::decode(any.value.as_slice()).ok()?;
    match s.fields.get(ORIGINAL_TYPE_FIELD)?.kind.as_ref()? {
        envoy_types::pb::google::protobuf::value::Kind::StringValue(t) => Some(t.clone()),
        _ => None,
    }
}

/// Encode a typed message as Envoy-style proto3 JSON (snake_case field names).
pub fn to_json<M: prost::Message + prost::Name>(msg: &M) -> Value {
    let pool = pool();
    let Ok(mut dm) = mosn_proto::to_dynamic(&pool, msg) else {
        return Value::Null;
    };
    let mut v = match mosn_proto::dynamic_to_json(&dm) {
        Ok(v) => v,
        Err(_) => {
            // An Any of a type the pool does not know (istiod's binary TypedStructs arrive
            // over xDS unparked): park them and try again.
            park_unknown_anys(&pool, &mut dm);
            mosn_proto::dynamic_to_json(&dm).unwrap_or(Value::Null)
        }
    };
    unpark(&mut v);
    v
}

/// The binary counterpart of [`park_unknown_types`]: replace every Any of an unknown type, also
/// inside known Anys, with a parked Struct. A TypedStruct keeps its `type_url` and `value`, so
/// the dump shows what Envoy's would.
fn park_unknown_anys(pool: &DescriptorPool, dm: &mut DynamicMessage) {
    use prost::Message;
    use prost_reflect::{ReflectMessage, Value as V};
    if dm.descriptor().full_name() == "google.protobuf.Any" {
        let field = |dm: &DynamicMessage, n: &str| dm.get_field_by_name(n).map(|v| v.into_owned());
        let url = match field(dm, "type_url") {
            Some(V::String(u)) => u,
            _ => return,
        };
        let bytes = match field(dm, "value") {
            Some(V::Bytes(b)) => b,
            _ => Default::default(),
        };
        match pool.get_message_by_name(url.rsplit('/').next().unwrap_or(&url)) {
            Some(desc) => {
                if let Ok(mut inner) = DynamicMessage::decode(desc, bytes.as_ref()) {
                    park_unknown_anys(pool, &mut inner);
                    dm.set_field_by_name("value", V::Bytes(inner.encode_to_vec().into()));
                }
            }
            None => {
                dm.set_field_by_name("type_url", V::String(STRUCT_URL.into()));
                let parked = parked_struct(&url, &bytes);
                dm.set_field_by_name("value", V::Bytes(parked.encode_to_vec().into()));
            }
        }
        return;
    }
    fn walk(pool: &DescriptorPool, v: &mut prost_reflect::Value) {
        match v {
            V::Message(m) => park_unknown_anys(pool, m),
            V::List(items) => items.iter_mut().for_each(|x| walk(pool, x)),
            V::Map(m) => m.values_mut().for_each(|x| walk(pool, x)),
            _ => {}
        }
    }
    for (_, v) in dm.fields_mut() {
        walk(pool, v);
    }
}

/// A parked Struct for an unknown Any: the original type URL, plus `type_url` and `value` when
/// it is a (udpa or xds) TypedStruct.
fn parked_struct(url: &str, bytes: &[u8]) -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PValue};
    #[derive(Clone, PartialEq, prost::Message)]
    struct TypedStruct {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Struct>,
    }
    let string = |s: &str| PValue {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(ORIGINAL_TYPE_FIELD.to_string(), string(url));
    if url.ends_with(".TypedStruct") {
        if let Ok(ts) = <TypedStruct as prost::Message>::decode(bytes) {
            fields.insert("type_url".into(), string(&ts.type_url));
            fields.insert(
                "value".into(),
                PValue {
                    kind: Some(Kind::StructValue(ts.value.unwrap_or_default())),
                },
            );
        }
    }
    Struct {
        fields: fields.into_iter().collect(),
    }
}

/// Remove trailing commas before `}` or `]` outside strings: one real Istio 1.5 bootstrap had one.
pub fn strip_trailing_commas(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut in_str, mut esc) = (false, false);
    for (i, c) in s.char_indices() {
        if in_str {
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c == ',' {
            let next = b[i + 1..].iter().find(|x| !x.is_ascii_whitespace());
            if matches!(next, Some(b'}') | Some(b']')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trailing_commas_outside_strings() {
        let s = strip_trailing_commas(r#"{"a": [1,2,], "b": ",}", }"#);
        assert_eq!(
            serde_json::from_str::<Value>(&s).unwrap(),
            json!({"a":[1,2],"b":",}"})
        );
    }

    #[test]
    fn park_and_unpark_round_trip() {
        let orig = json!({"name": "istio.stats", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "value": {"config": {"vm_config": {"runtime": "envoy.wasm.runtime.null"}}}}});
        let mut v = orig.clone();
        let mut parked = vec![];
        park_unknown_types(&mut v, &mut parked);
        assert_eq!(parked, vec!["type.googleapis.com/udpa.type.v1.TypedStruct"]);
        assert_eq!(v["typed_config"]["@type"], STRUCT_URL);
        unpark(&mut v);
        assert_eq!(v, orig);
    }
}
