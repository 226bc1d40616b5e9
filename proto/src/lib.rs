//! envoy-types' descriptor set and the proto3 JSON helpers that mosn (the proxy) and mosnctl
//! share.
//!
//! envoy-types has the prost structs but no JSON; prost-reflect reads proto3 JSON (including
//! `@type` Anys) with envoy-types' own descriptor set and we transcode from there. An `@type`
//! the pool does not know would make prost-reflect fail, so [`park_unknown_types`] first turns
//! such an object into a `google.protobuf.Struct` Any that remembers the original type URL, and
//! [`unpark`] restores it in JSON output.
//!
//! Nothing here holds a [`DescriptorPool`]: every helper takes the caller's, because the two
//! differ on purpose. The proxy decodes its pool on demand and drops it after start-up (it
//! weighs tens of MB); mosnctl keeps one for the process and adds the TypedStructs to it.

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

/// The type URL of `google.protobuf.Struct`, used to park unknown typed configs.
pub const STRUCT_URL: &str = "type.googleapis.com/google.protobuf.Struct";
/// Field inside a parked Struct that keeps the original `@type`.
pub const ORIGINAL_TYPE_FIELD: &str = "original_type_url";

/// The FileDescriptorSet envoy-types' structs were generated from (copied by build.rs).
pub static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

/// Decode [`DESCRIPTORS`]: every Envoy v3 / xds / udpa type that envoy-types compiled.
pub fn decode_pool() -> DescriptorPool {
    DescriptorPool::decode(DESCRIPTORS).expect("envoy-types descriptor set")
}

/// Whether `pool` can decode `type_url`.
pub fn known_type(pool: &DescriptorPool, type_url: &str) -> bool {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    pool.get_message_by_name(name).is_some()
}

/// Replace every Any whose type `pool` does not know with a parked Struct; appends the parked
/// type URLs to `parked`.
pub fn park_unknown_types(pool: &DescriptorPool, v: &mut Value, parked: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(t)) = map.get("@type") {
                if !known_type(pool, t) {
                    let t = t.clone();
                    let mut fields: Map<String, Value> = std::mem::take(map);
                    fields.remove("@type");
                    fields.insert(ORIGINAL_TYPE_FIELD.into(), Value::String(t.clone()));
                    map.insert("@type".into(), Value::String(STRUCT_URL.into()));
                    map.insert("value".into(), Value::Object(fields));
                    parked.push(t);
                    return;
                }
            }
            for child in map.values_mut() {
                park_unknown_types(pool, child, parked);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|c| park_unknown_types(pool, c, parked)),
        _ => {}
    }
}

/// Undo [`park_unknown_types`] in JSON output so operators see the original typed configs.
pub fn unpark(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let parked = map.get("@type").and_then(Value::as_str) == Some(STRUCT_URL)
                && map
                    .get("value")
                    .and_then(|x| x.get(ORIGINAL_TYPE_FIELD))
                    .is_some();
            if parked {
                if let Some(Value::Object(mut fields)) = map.remove("value") {
                    let t = fields.remove(ORIGINAL_TYPE_FIELD).unwrap_or(Value::Null);
                    map.clear();
                    map.insert("@type".into(), t);
                    map.extend(fields);
                }
            }
            map.values_mut().for_each(unpark);
        }
        Value::Array(items) => items.iter_mut().for_each(unpark),
        _ => {}
    }
}

/// Decode proto3 JSON into the typed message `M` through `pool`; with `strict`, unknown
/// fields are errors. Unknown `@type`s must have been parked already.
pub fn from_json<M: prost::Message + prost::Name + Default>(
    pool: &DescriptorPool,
    value: &Value,
    strict: bool,
) -> Result<M, String> {
    let desc = pool
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| format!("{} is not in the descriptor pool", M::full_name()))?;
    let opts = DeserializeOptions::new().deny_unknown_fields(strict);
    let dm =
        DynamicMessage::deserialize_with_options(desc, value, &opts).map_err(|e| e.to_string())?;
    dm.transcode_to::<M>().map_err(|e| e.to_string())
}

/// Re-read a typed message as a [`DynamicMessage`] of `pool`, ready for [`dynamic_to_json`].
pub fn to_dynamic<M: prost::Message + prost::Name>(
    pool: &DescriptorPool,
    msg: &M,
) -> Result<DynamicMessage, String> {
    let desc = pool
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| format!("{} is not in the descriptor pool", M::full_name()))?;
    DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).map_err(|e| e.to_string())
}

/// Serialize as Envoy-style proto3 JSON (snake_case field names), parked types still parked.
/// Fails on an Any whose type the message's pool does not know.
pub fn dynamic_to_json(dm: &DynamicMessage) -> Result<Value, String> {
    let opts = SerializeOptions::new().use_proto_field_name(true);
    dm.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| e.to_string())
}

/// Encode a typed message as Envoy-style proto3 JSON (snake_case names, parked types restored).
pub fn to_json<M: prost::Message + prost::Name>(
    pool: &DescriptorPool,
    msg: &M,
) -> Result<Value, String> {
    let mut v = dynamic_to_json(&to_dynamic(pool, msg)?)?;
    unpark(&mut v);
    Ok(v)
}
