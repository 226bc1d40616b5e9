//! Fuzz the bootstrap loader: any bytes as JSON or YAML must either load or be rejected with an
//! error, never panic (the same path `--mode validate` takes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for yaml in [false, true] {
        let Ok(value) = mosn::config::parse_text(text, yaml) else {
            continue;
        };
        if let Ok(boot) = mosn::config::decode_bootstrap(value, false) {
            let stats = mosn::stats::Stats::new();
            let _ = mosn::config::Snapshot::build(&boot, &stats);
        }
    }
});
