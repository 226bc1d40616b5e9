//! Istio's TCP metadata exchange: on a TLS connection whose ALPN is `istio-peer-exchange`,
//! each side first sends its workload metadata, framed as Istio's `istio.metadata_exchange`
//! network filter frames it (`metadata_exchange.cc`):
//!
//! ```text
//! magic 0x3D230467 (u32, big-endian) | length (u32, big-endian) | google.protobuf.Any
//! ```
//!
//! The Any holds a `google.protobuf.Struct` with `x-envoy-peer-metadata` (the node's metadata,
//! the keys the HTTP exchange sends) and `x-envoy-peer-metadata-id` (the node id). The bytes
//! after the other side's frame are the application's. A stream that does not start with the
//! magic is passed on as it is, as Envoy does.
//!
//! Istio runs the exchange on inbound chains (`istio.metadata_exchange` network filter) and
//! outbound clusters (the same name in the cluster's `filters`); mosn offers and selects
//! `istio-peer-exchange` only there, and only for tcp_proxy traffic.

use super::peer::{Local, Workload};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Value};
use prost::Message;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The frame's magic number.
pub const MAGIC: u32 = 0x3D23_0467;
/// The filter's name, on a listener's chain and in a cluster's `filters`.
pub const FILTER: &str = "istio.metadata_exchange";
/// The Struct's keys.
const METADATA: &str = "x-envoy-peer-metadata";
const METADATA_ID: &str = "x-envoy-peer-metadata-id";
const STRUCT_URL: &str = "type.googleapis.com/google.protobuf.Struct";
/// A frame longer than this is not taken for one (Envoy sets no bound; mosn will not buffer
/// without one).
const MAX_FRAME: usize = 1 << 20;
/// How long to wait for the other side's frame. It sends it on its first read or write,
/// and this side's frame is such a read, so a peer that agreed on the ALPN answers at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// This node's frame: `id` (sent when not empty) and `metadata`.
pub fn header(id: &str, metadata: Struct) -> Bytes {
    let mut data = Struct::default();
    data.fields.insert(
        METADATA.into(),
        Value {
            kind: Some(Kind::StructValue(metadata)),
        },
    );
    if !id.is_empty() {
        data.fields.insert(
            METADATA_ID.into(),
            Value {
                kind: Some(Kind::StringValue(id.into())),
            },
        );
    }
    let any = Any {
        type_url: STRUCT_URL.into(),
        value: data.encode_to_vec(),
    }
    .encode_to_vec();
    let mut out = BytesMut::with_capacity(8 + any.len());
    out.put_u32(MAGIC);
    out.put_u32(any.len() as u32);
    out.put_slice(&any);
    out.freeze()
}

/// What the exchange left: the other side's workload, if its frame carried one, the bytes
/// read past the frame (the application's, to pass on first), and the frames' sizes.
#[derive(Debug, Default)]
pub struct Exchanged {
    /// The other side's workload.
    pub peer: Option<Workload>,
    /// Bytes read after its frame (or all that was read, when there was no frame).
    pub rest: BytesMut,
    /// Bytes read for its frame.
    pub consumed: usize,
    /// Bytes of this side's frame written.
    pub sent: usize,
    /// Its frame started (the magic came) but did not end in time, or is longer than mosn
    /// takes: the stream cannot be passed on.
    pub broken: bool,
}

/// Run the exchange: send this node's frame on `w`, then read the other side's from `r`
/// (waiting at most `wait` for it).
pub async fn exchange<R, W>(r: &mut R, w: &mut W, local: &Local, wait: Duration) -> Exchanged
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if w.write_all(&local.mx_header).await.is_err() || w.flush().await.is_err() {
        return Exchanged::default();
    }
    let sent = local.mx_header.len();
    let mut buf = BytesMut::with_capacity(4096);
    let read = async {
        // The frame's head, then all of it; a short stream stops at what it had.
        let mut need = 8;
        while buf.len() < need {
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if need == 8 && buf.len() >= 8 {
                if (&buf[..4]).get_u32() != MAGIC {
                    return;
                }
                let len = (&buf[4..8]).get_u32() as usize;
                if len > MAX_FRAME {
                    return;
                }
                need = 8 + len;
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    Exchanged {
        sent,
        ..take_frame(buf)
    }
}

/// Take the frame off the start of `buf`, if it has a whole one (see [`Exchanged`]).
pub fn take_frame(mut buf: BytesMut) -> Exchanged {
    if buf.len() < 8 || (&buf[..4]).get_u32() != MAGIC {
        return Exchanged {
            rest: buf,
            ..Default::default()
        };
    }
    let len = (&buf[4..8]).get_u32() as usize;
    if len > MAX_FRAME || buf.len() < 8 + len {
        return Exchanged {
            broken: true,
            ..Default::default()
        };
    }
    let frame = buf.split_to(8 + len);
    let peer = Any::decode(&frame[8..])
        .ok()
        .filter(|a| a.type_url.ends_with("google.protobuf.Struct"))
        .and_then(|a| Struct::decode(a.value.as_slice()).ok())
        .and_then(|s| match s.fields.get(METADATA)?.kind.as_ref()? {
            Kind::StructValue(m) => Some(Workload::from_struct(m)),
            _ => None,
        });
    Exchanged {
        peer,
        rest: buf,
        consumed: frame.len(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Local {
        let node: envoy_types::pb::envoy::config::core::v3::Node = crate::config::test_proto(
            serde_json::json!({"id": "sidecar~10.0.0.2~ratings-v2-abc.default~default.svc.cluster.local",
                "metadata": {"WORKLOAD_NAME": "ratings-v2", "NAMESPACE": "default",
                    "LABELS": {"app": "ratings", "version": "v2"}, "INSTANCE_IPS": "10.0.0.2"}}),
        );
        Local::from_node(Some(&node))
    }

    #[test]
    fn frame_layout_is_istios() {
        let l = local();
        let h = &l.mx_header;
        // Magic and length, big-endian, then an Any of a Struct.
        assert_eq!(&h[..4], &[0x3D, 0x23, 0x04, 0x67]);
        let len = u32::from_be_bytes(h[4..8].try_into().unwrap()) as usize;
        assert_eq!(h.len(), 8 + len);
        let any = Any::decode(&h[8..]).unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Struct");
        let s = Struct::decode(any.value.as_slice()).unwrap();
        assert!(matches!(
            s.fields[METADATA_ID].kind,
            Some(Kind::StringValue(ref id)) if id.starts_with("sidecar~10.0.0.2~ratings-v2")
        ));
        let Some(Kind::StructValue(m)) = &s.fields[METADATA].kind else {
            panic!("no metadata struct")
        };
        // What the HTTP exchange sends: not INSTANCE_IPS.
        assert!(m.fields.contains_key("WORKLOAD_NAME") && !m.fields.contains_key("INSTANCE_IPS"));
    }

    #[test]
    fn frames_are_read_and_the_rest_passes_on() {
        let l = local();
        let mut stream = BytesMut::from(&l.mx_header[..]);
        stream.extend_from_slice(b"app bytes");
        let got = take_frame(stream);
        let peer = got.peer.expect("the frame's workload");
        assert_eq!(
            (peer.workload.as_str(), peer.app.as_str()),
            ("ratings-v2", "ratings")
        );
        assert_eq!(&got.rest[..], b"app bytes");
        assert_eq!(got.consumed, l.mx_header.len());
        // No magic: all of it is the application's.
        let plain = take_frame(BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]));
        assert!(plain.peer.is_none() && &plain.rest[..] == b"GET / HTTP/1.1\r\n");
        // A frame cut short leaves nothing to pass on.
        let cut = take_frame(BytesMut::from(&l.mx_header[..20]));
        assert!(cut.peer.is_none() && cut.broken && cut.rest.is_empty());
        // A stream shorter than the magic is the application's.
        let short = take_frame(BytesMut::from(&b"hi"[..]));
        assert!(!short.broken && &short.rest[..] == b"hi");
    }

    /// What the application reads: the bytes left past the frame, then from `r`, `n` in all.
    async fn app_bytes(rest: BytesMut, r: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
        let mut out = rest.to_vec();
        while out.len() < n {
            let mut b = [0u8; 16];
            let got = r.read(&mut b).await.unwrap();
            out.extend_from_slice(&b[..got]);
        }
        out
    }

    /// A length-delimited protobuf field, encoded by hand (not by prost).
    fn ld(field: u8, bytes: &[u8]) -> Vec<u8> {
        assert!(bytes.len() < 128);
        let mut v = vec![field << 3 | 2, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    /// The frame Istio's filter writes for a node with no id and `WORKLOAD_NAME: w`, built by
    /// hand from its layout: Any { type_url, value: Struct { fields: { "x-envoy-peer-metadata":
    /// Value { struct_value: Struct { fields: { "WORKLOAD_NAME": Value { string_value: "w" }}}}}}}.
    fn golden() -> Vec<u8> {
        let entry = |k: &str, v: Vec<u8>| ld(1, &[ld(1, k.as_bytes()), ld(2, &v)].concat());
        let inner = entry("WORKLOAD_NAME", ld(3, b"w"));
        let data = entry("x-envoy-peer-metadata", ld(5, &inner));
        let any = [
            ld(1, b"type.googleapis.com/google.protobuf.Struct"),
            ld(2, &data),
        ]
        .concat();
        let mut frame = vec![0x3D, 0x23, 0x04, 0x67, 0, 0, 0, any.len() as u8];
        frame.extend_from_slice(&any);
        frame
    }

    #[test]
    fn frames_match_a_hand_built_one() {
        let mut md = Struct::default();
        md.fields.insert(
            "WORKLOAD_NAME".into(),
            Value {
                kind: Some(Kind::StringValue("w".into())),
            },
        );
        assert_eq!(&header("", md)[..], &golden()[..]);
        let got = take_frame(BytesMut::from(&golden()[..]));
        assert_eq!(got.peer.map(|p| p.workload), Some("w".to_string()));
    }

    /// A peer that, like Envoy, writes its frame only once it has read something (here all
    /// of this side's frame), then its application bytes.
    #[tokio::test]
    async fn a_peer_that_answers_after_reading() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let l = local();
        let peer = async {
            let mut head = [0u8; 8];
            br.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes(head[4..].try_into().unwrap()) as usize;
            let mut frame = vec![0u8; len];
            br.read_exact(&mut frame).await.unwrap();
            bw.write_all(&golden()).await.unwrap();
            bw.write_all(b"greeting").await.unwrap();
        };
        let (got, ()) = tokio::join!(exchange(&mut ar, &mut aw, &l, WAIT), peer);
        assert_eq!(got.peer.map(|p| p.workload), Some("w".to_string()));
        assert_eq!(app_bytes(got.rest, &mut ar, 8).await, b"greeting");
        assert!(!got.broken && got.sent == l.mx_header.len());
    }

    #[tokio::test]
    async fn exchange_over_a_socket_pair() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let (la, lb) = (local(), local());
        let other = async {
            let got = exchange(&mut br, &mut bw, &lb, WAIT).await;
            bw.write_all(b"hello").await.unwrap();
            got
        };
        let (x, y) = tokio::join!(exchange(&mut ar, &mut aw, &la, WAIT), other);
        assert_eq!(y.peer.unwrap().workload, "ratings-v2");
        assert_eq!(x.peer.unwrap().workload, "ratings-v2");
        assert_eq!(app_bytes(x.rest, &mut ar, 5).await, b"hello");
    }
}
