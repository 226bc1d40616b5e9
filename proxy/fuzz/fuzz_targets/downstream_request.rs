//! Fuzz the inline HTTP/1.x request-head parser: it reads bytes from any client of the
//! sidecar. It must never panic, and what it makes of a connection's bytes (the requests it
//! serves inline, and whether it hands the rest to hyper) must not depend on where the reads
//! cut them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::proxy::h1server::decode_requests;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose how to cut the rest.
    let [flags, cut, rest @ ..] = data else { return };
    let whole = decode_requests(&[rest]);
    let split = if rest.len() <= 64 && flags & 1 == 1 {
        let pieces: Vec<&[u8]> = rest.chunks(1).collect();
        decode_requests(&pieces)
    } else {
        let (a, b) = rest.split_at((*cut as usize).min(rest.len()));
        decode_requests(&[a, b])
    };
    assert_eq!(whole, split, "the outcome depends on the cut");
});
