//! Fuzz the inline HTTP/1.1 upstream response decoder (head, framing, chunked bodies,
//! trailers): it reads bytes from any upstream a sidecar talks to. It must never panic, and
//! the decoded response must not depend on where the reads cut the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::cluster::h1conn::decode_response;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose HEAD or not and where to cut the rest.
    let [flags, cut, rest @ ..] = data else { return };
    let head_only = flags & 1 == 1;
    let whole = decode_response(&[rest], head_only);
    let cut = (*cut as usize).min(rest.len());
    let (a, b) = rest.split_at(cut);
    // Byte-at-a-time reads for short inputs, two pieces otherwise.
    let split = if rest.len() <= 64 && flags & 2 == 2 {
        let pieces: Vec<&[u8]> = rest.chunks(1).collect();
        decode_response(&pieces, head_only)
    } else {
        decode_response(&[a, b], head_only)
    };
    match (whole, split) {
        (Ok(w), Ok(s)) => {
            assert_eq!(w.0.status, s.0.status);
            assert_eq!(w.0.version, s.0.version);
            assert_eq!(w.0.headers, s.0.headers);
            assert_eq!(w.1, s.1, "body differs");
            assert_eq!(w.2, s.2, "trailers differ");
        }
        (Err(_), Err(_)) => {}
        (w, s) => panic!(
            "verdict depends on the cut: whole {:?}, split {:?}",
            w.map(|r| r.0.status),
            s.map(|r| r.0.status)
        ),
    }
});
