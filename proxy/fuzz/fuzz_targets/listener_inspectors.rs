//! Fuzz the listener filters: arbitrary first bytes of a connection through the TLS
//! ClientHello parser (tls_inspector) and the HTTP request-line sniffer (http_inspector).
//! These read untrusted bytes from any client that reaches 15006; they must never panic, and
//! a verdict on a prefix must not contradict the verdict on the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::listener::inspect::{classify, Inspectors};

fuzz_target!(|data: &[u8]| {
    for (tls, http) in [(true, true), (true, false), (false, true)] {
        let cfg = Inspectors {
            tls,
            http,
            timeout: None,
            continue_on_timeout: false,
        };
        let whole = classify(data, cfg, true).expect("a full buffer always gets a verdict");
        if whole.transport == "tls" {
            assert!(tls);
        }
        // A verdict reached on a prefix is final: more bytes must not change it.
        if let Some(cut) = data.len().checked_sub(1) {
            if let Some(early) = classify(&data[..cut], cfg, false) {
                assert_eq!(early, whole, "the verdict changed with more data");
            }
        }
    }
});
