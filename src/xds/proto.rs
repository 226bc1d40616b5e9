//! Proto3 JSON <-> envoy-types protos, and small helpers around `google.protobuf.Any`.
//!
//! envoy-types has the prost structs but no JSON; prost-reflect reads proto3 JSON (including
//! `@type` Anys) with envoy-types' own descriptor set and we transcode or re-encode from there.
//! The descriptor set and the parking helpers come from the `mosn-proto` crate, which the proxy
//! (proxy/src/config/decode.rs) uses too, so both see a dump the same way:
//! - `udpa.type.v1.TypedStruct` and `xds.type.v3.TypedStruct` (Istio wraps its wasm and
//!   metadata-exchange filters in them) are added to the pool by hand, so they are served to
//!   clients byte-for-byte as istiod would send them;
//! - any other `@type` the pool lacks (`istio.alpn`, `istio_authn`, ...) is parked as a
//!   `google.protobuf.Struct` with an `original_type_url` field, exactly as the proxy parks it.

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::prost_types::{
    field_descriptor_proto::{Label, Type},
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto,
};
use prost_reflect::DescriptorPool;
use serde_json::Value;
use std::sync::OnceLock;

pub use mosn_proto::{unpark, ORIGINAL_TYPE_FIELD, STRUCT_URL};

/// The descriptor pool: every type envoy-types compiled, plus the two TypedStructs.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = mosn_proto::decode_pool();
        for package in ["udpa.type.v1", "xds.type.v3"] {
            if pool
                .get_message_by_name(&format!("{package}.TypedStruct"))
                .is_none()
            {
                pool.add_file_descriptor_proto(typed_struct_file(package))
                    .expect("hand-written TypedStruct descriptor");
            }
        }
        pool
    })
}

/// `message TypedStruct { string type_url = 1; google.protobuf.Struct value = 2; }`, the same
/// shape in both packages (cncf/xds udpa/type/v1 and xds/type/v3 typed_struct.proto).
fn typed_struct_file(package: &str) -> FileDescriptorProto {
    let field = |name: &str, number: i32, ty: Type, type_name: Option<&str>| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(str::to_string),
        json_name: Some(name.into()),
        ..Default::default()
    };
    FileDescriptorProto {
        name: Some(format!("{}/typed_struct.proto", package.replace('.', "/"))),
        package: Some(package.into()),
        dependency: vec!["google/protobuf/struct.proto".into()],
        message_type: vec![DescriptorProto {
            name: Some("TypedStruct".into()),
            field: vec![
                field("type_url", 1, Type::String, None),
                field("value", 2, Type::Message, Some(".google.protobuf.Struct")),
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

/// Replace every Any whose type is unknown with a parked Struct; collects the parked URLs.
pub fn park_unknown_types(v: &mut Value, parked: &mut Vec<String>) {
    mosn_proto::park_unknown_types(pool(), v, parked);
}

/// Decode a JSON `{"@type": ..., ...}` object into a binary Any (nested Anys included).
/// Unknown fields are tolerated: dumps come from Envoys newer than our descriptors.
pub fn any_from_json(value: &Value) -> Result<Any, String> {
    from_json(value, false)
}

/// Decode proto3 JSON into the typed message `M`; with `strict`, unknown fields are errors.
pub fn from_json<M: prost::Message + prost::Name + Default>(
    value: &Value,
    strict: bool,
) -> Result<M, String> {
    let mut value = value.clone();
    park_unknown_types(&mut value, &mut Vec::new());
    mosn_proto::from_json(pool(), &value, strict)
}

/// Encode a typed message as Envoy-style proto3 JSON (snake_case names, parked types restored).
pub fn to_json<M: prost::Message + prost::Name>(msg: &M) -> Result<Value, String> {
    mosn_proto::to_json(pool(), msg)
}

/// Pack a typed message into an Any with its canonical type URL.
pub fn pack<M: prost::Message + prost::Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// Field 1 of every xDS resource type we serve is its name (Cluster.name,
/// ClusterLoadAssignment.cluster_name, Listener.name, RouteConfiguration.name, Secret.name,
/// ScopedRouteConfiguration.name, VirtualHost.name, Runtime.name), so one tiny message reads
/// the name of any of them without knowing the type; prost skips the other fields.
#[derive(Clone, PartialEq, prost::Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// The resource name inside an Any (see [`NameOnly`]); `None` when it is empty or undecodable.
pub fn resource_name(any: &Any) -> Option<String> {
    let n: NameOnly = prost::Message::decode(any.value.as_slice()).ok()?;
    Some(n.name).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use serde_json::json;

    #[test]
    fn typed_struct_is_decoded_not_parked() {
        let any = any_from_json(&json!({
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "value": {"config": {"root_id": "stats_outbound"}}
        }))
        .unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/udpa.type.v1.TypedStruct");
        assert!(!any.value.is_empty());
    }

    #[test]
    fn unknown_types_are_parked_and_names_read() {
        let any = any_from_json(&json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "outbound|9080||reviews.default.svc.cluster.local",
            "filters": [{"name": "istio.alpn", "typed_config": {
                "@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
                "alpn_override": [{"alpn_override": ["istio-http/1.0", "istio"]}]}}]
        }))
        .unwrap();
        assert_eq!(
            resource_name(&any).as_deref(),
            Some("outbound|9080||reviews.default.svc.cluster.local")
        );
        let c: Cluster = prost::Message::decode(any.value.as_slice()).unwrap();
        let tc = c.filters[0].typed_config.as_ref().unwrap();
        assert_eq!(tc.type_url, STRUCT_URL);
        let back = to_json(&c).unwrap();
        assert_eq!(
            back["filters"][0]["typed_config"]["@type"],
            "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"
        );
    }
}
