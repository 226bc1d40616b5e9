//! Fuzz the access-log text format (`Format::parse` and `render`) with arbitrary format
//! strings, as a logger's config (from xDS) may carry them: parsing and rendering must never
//! panic, rendering is the same every time, and a string without `%` renders as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mosn::proxy::access_log::{Entry, Format};
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut h = http::HeaderMap::new();
    h.insert("user-agent", http::HeaderValue::from_static("curl/8"));
    h.insert("x-forwarded-for", http::HeaderValue::from_static("192.0.2.9"));
    let e = Entry {
        start: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_105_362_123)),
        duration: Some(Duration::from_millis(7)),
        method: "GET",
        path: "/reviews/0",
        authority: "reviews:9080",
        protocol: "HTTP/1.1",
        req_headers: Some(&h),
        resp_headers: Some(&h),
        status: 503,
        flags: "UF,URX",
        details: "upstream_reset_before_response_started{remote_connection_failure,delayed_connect_error:_111}",
        bytes_sent: 91,
        upstream_host: Some("10.1.0.7:9080".parse().unwrap()),
        upstream_local: Some("[fd00::6]:41234".parse().unwrap()),
        upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local"),
        route_name: Some("default"),
        downstream_local: Some("10.96.0.10:9080".parse().unwrap()),
        downstream_remote: Some("192.0.2.9:0".parse().unwrap()),
        downstream_direct_remote: Some("10.1.0.2:40000".parse().unwrap()),
        transport_failure: Some("delayed connect error: 111"),
        downstream_transport_failure: Some("TLS_error:|handshake failed:TLS_error_end"),
        termination: Some("transport socket timeout was reached"),
        ..Default::default()
    };
    let f = Format::parse(s);
    let once = f.render(&e);
    assert_eq!(once, Format::parse(s).render(&e), "{s:?}");
    if !s.contains('%') {
        assert_eq!(once, s, "{s:?}");
    }
});
