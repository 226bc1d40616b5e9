//! Fuzz Istio's TCP metadata exchange frame reader (a peer that agreed on ALPN
//! `istio-peer-exchange` sends these bytes first): it must never panic; without the magic
//! every byte passes on; with a whole frame, exactly the bytes after it pass on; a frame cut
//! short passes nothing on (the connection closes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::proxy::istio::tcp_mx::{take_frame, MAGIC};

fuzz_target!(|data: &[u8]| {
    let got = take_frame(bytes::BytesMut::from(data));
    let magic = data.len() >= 8 && data[..4] == MAGIC.to_be_bytes();
    if !magic {
        assert_eq!(&got.rest[..], data, "no frame: everything passes on");
        assert!(got.peer.is_none() && !got.broken && got.consumed == 0);
        return;
    }
    let len = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
    if got.broken {
        assert!(got.rest.is_empty() && got.peer.is_none());
        return;
    }
    assert_eq!(got.consumed, 8 + len);
    assert_eq!(
        &got.rest[..],
        &data[8 + len..],
        "the bytes after the frame pass on"
    );
});
