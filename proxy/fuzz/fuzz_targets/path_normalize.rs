//! Fuzz Envoy's path normalization (`normalize_path`, `merge_slashes`) with arbitrary request
//! targets: it must never panic, a normalized path starts with `/` and has no `.` or `..`
//! segment left, and normalizing again changes nothing. Decoding escaped slashes first
//! (`path_with_escaped_slashes_action`) leaves no `%2F`/`%5C` in the path and keeps the query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::proxy::path_norm::{canonical, normalize, unescape_slashes};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    for merge in [false, true] {
        let Ok(once) = normalize(target, true, merge) else {
            continue;
        };
        let path = once.split('?').next().unwrap_or("");
        assert!(path.starts_with('/'), "{target:?} -> {once:?}");
        assert!(
            !path.split('/').any(|s| s == "." || s == ".."),
            "{target:?} -> {once:?}"
        );
        let twice = normalize(&once, true, merge).expect("a normalized path normalizes");
        assert_eq!(once, twice, "{target:?}");
        let _ = canonical(path);
    }
    if let Some(u) = unescape_slashes(target) {
        let (path, query) = u.split_once('?').map_or((u.as_str(), None), |(p, q)| (p, Some(q)));
        let lower = path.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{target:?} -> {u:?}");
        assert_eq!(query, target.split_once('?').map(|(_, q)| q), "{target:?}");
        let _ = normalize(&u, true, true);
    }
});
