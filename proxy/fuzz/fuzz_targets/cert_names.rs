//! Fuzz the DER reader behind RBAC principals and XFCC (a certificate's SANs and subject):
//! arbitrary bytes must never panic, and the names it returns come from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::tls::der::{subject, subject_alt_names};

fuzz_target!(|data: &[u8]| {
    if let Some(sans) = subject_alt_names(data) {
        // Every name is read from the input's bytes: none can be longer than it.
        for n in sans.uri.iter().chain(&sans.dns).chain(&sans.email) {
            assert!(n.len() <= data.len() * 3, "{n:?}");
        }
    }
    let _ = subject(data);
});
