//! Fuzz the proxy_protocol listener filter's judgement of a connection's first bytes (any
//! client that reaches a gateway's port sends them): it must never panic, a header's length
//! must lie within the bytes seen, and a verdict other than "need more" on a prefix must be
//! the verdict on the whole input (a refusal may name another reason).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::listener::proxy_protocol::{verdict, Verdict};

fuzz_target!(|data: &[u8]| {
    for allow in [false, true] {
        let whole = verdict(data, allow);
        if let Verdict::Header(len, _) = whole {
            assert!(len <= data.len(), "a header past the bytes seen");
        }
        if let Verdict::NeedMore(want) = whole {
            assert!(want > data.len(), "asks for no more than it has");
        }
        for cut in 0..data.len() {
            let early = verdict(&data[..cut], allow);
            if !matches!(early, Verdict::NeedMore(_)) {
                let same = match (&early, &whole) {
                    (Verdict::Refuse(_), Verdict::Refuse(_)) => true,
                    (a, b) => a == b,
                };
                assert!(same, "the verdict at {cut} bytes changed with more: {early:?} / {whole:?}");
                break;
            }
        }
    }
});
