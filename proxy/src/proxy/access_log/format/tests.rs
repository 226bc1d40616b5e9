//! The formatter's operators, one by one and in Envoy's and Istio's layouts.

use super::*;

fn entry(h: &HeaderMap) -> Entry<'_> {
    Entry {
        start: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_105_362_123)),
        duration: Some(Duration::from_millis(7)),
        method: "GET",
        path: "/reviews/0",
        authority: "reviews:9080",
        protocol: "HTTP/1.1",
        req_headers: Some(h),
        resp_headers: None,
        status: 503,
        flags: "UF,URX",
        details: "upstream_reset_before_response_started{connection_failure}",
        bytes_received: 0,
        bytes_sent: 91,
        upstream_host: Some("10.1.0.7:9080".parse().unwrap()),
        upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local"),
        route_name: Some("default"),
        downstream_local: Some("10.96.0.10:9080".parse().unwrap()),
        downstream_remote: Some("10.1.0.2:40000".parse().unwrap()),
        ..Default::default()
    }
}

#[test]
fn envoy_default_format() {
    let mut h = HeaderMap::new();
    h.insert("user-agent", "curl/8".parse().unwrap());
    h.insert("x-request-id", "abc".parse().unwrap());
    let line = Format::parse(DEFAULT_FORMAT).render(&entry(&h));
    assert_eq!(
        line,
        "[2025-11-25T21:16:02.123Z] \"GET /reviews/0 HTTP/1.1\" 503 UF,URX 0 91 7 - \"-\" \"curl/8\" \"abc\" \"reviews:9080\" \"10.1.0.7:9080\"\n"
    );
}

#[test]
fn operators_alternatives_truncation_and_escapes() {
    let mut h = HeaderMap::new();
    h.insert("x-b", "bravo".parse().unwrap());
    let f = Format::parse("%REQ(X-A?X-B):3% 100%% %UPSTREAM_CLUSTER% %ROUTE_NAME% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UNKNOWN_OP% %RESPONSE_CODE_DETAILS% tail %");
    assert_eq!(
        f.render(&entry(&h)),
        "bra 100% outbound|9080|v1|reviews.default.svc.cluster.local default 10.1.0.2 - upstream_reset_before_response_started{connection_failure} tail %"
    );
}

#[test]
fn json_format_keeps_numbers_typed() {
    let h = HeaderMap::new();
    let s: envoy_types::pb::google::protobuf::Struct = decode::from_json(
        &serde_json::json!({"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "ua": "%REQ(USER-AGENT)%",
            "path": "p=%REQ(:PATH)%", "n": {"host": "%UPSTREAM_HOST%"}}),
        true,
    )
    .unwrap();
    let v = render_json(&json_layout(&s), &entry(&h));
    assert_eq!(
        v,
        serde_json::json!({"code": 503, "flags": "UF,URX", "ua": null, "path": "p=/reviews/0",
            "n": {"host": "10.1.0.7:9080"}})
    );
}

#[test]
fn tls_operators() {
    let h = HeaderMap::new();
    let f = Format::parse(
        "%REQUESTED_SERVER_NAME% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% \
         %DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_FINGERPRINT_256% %UPSTREAM_PEER_URI_SAN% \
         %UPSTREAM_LOCAL_URI_SAN%",
    );
    // No TLS on either side: Envoy's "-" for each.
    assert_eq!(f.render(&entry(&h)), "- - - - - - -");
    let mut down = crate::tls::Peer {
        sni: Some("outbound_.9080_._.reviews.default.svc.cluster.local".into()),
        subject: Some("O=cluster.local".into()),
        hash: Some("ab12".into()),
        local_uri: Some("spiffe://cluster.local/ns/default/sa/reviews".into()),
        ..Default::default()
    };
    down.sans.uri = vec!["spiffe://a".into(), "spiffe://b".into()];
    let up = crate::cluster::conn_info::TlsNames {
        local: "spiffe://cluster.local/ns/default/sa/reviews".into(),
        peer: "spiffe://cluster.local/ns/default/sa/ratings".into(),
    };
    let e = Entry {
        downstream_tls: Some(&down),
        upstream_tls: Some(&up),
        ..entry(&h)
    };
    assert_eq!(
        f.render(&e),
        "outbound_.9080_._.reviews.default.svc.cluster.local spiffe://a,spiffe://b \
         spiffe://cluster.local/ns/default/sa/reviews O=cluster.local ab12 \
         spiffe://cluster.local/ns/default/sa/ratings spiffe://cluster.local/ns/default/sa/reviews"
    );
    // A client without a certificate over TLS: its fields are "-", the SNI is there.
    let anonymous = crate::tls::Peer {
        sni: Some("x".into()),
        ..Default::default()
    };
    let e = Entry {
        downstream_tls: Some(&anonymous),
        ..entry(&h)
    };
    assert_eq!(f.render(&e), "x - - - - - -");
}

#[test]
fn address_operators() {
    let h = HeaderMap::new();
    let f = Format::parse(
        "%UPSTREAM_HOST% %UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_REMOTE_PORT% \
         %UPSTREAM_LOCAL_ADDRESS% %UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %UPSTREAM_LOCAL_PORT% \
         %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT% \
         %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_PORT% \
         %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% \
         %DOWNSTREAM_DIRECT_REMOTE_PORT% %UPSTREAM_PORT%",
    );
    // No upstream connection and no direct peer known: "-", as for an unknown operator.
    assert_eq!(
        f.render(&entry(&h)),
        "10.1.0.7:9080 10.1.0.7 9080 - - - 10.96.0.10 9080 10.1.0.2:40000 40000 - - - -"
    );
    let e = Entry {
        upstream_local: Some("[fd00::6]:41234".parse().unwrap()),
        downstream_remote: Some("192.0.2.9:0".parse().unwrap()),
        downstream_direct_remote: Some("10.1.0.2:40000".parse().unwrap()),
        ..entry(&h)
    };
    assert_eq!(
        f.render(&e),
        "10.1.0.7:9080 10.1.0.7 9080 [fd00::6]:41234 fd00::6 41234 10.96.0.10 9080 \
         192.0.2.9:0 0 10.1.0.2:40000 10.1.0.2 40000 -"
    );
    // In JSON, ports are numbers, as in Envoy.
    let s: envoy_types::pb::google::protobuf::Struct = decode::from_json(
        &serde_json::json!({"p": "%UPSTREAM_LOCAL_PORT%", "a": "%UPSTREAM_LOCAL_ADDRESS%"}),
        true,
    )
    .unwrap();
    assert_eq!(
        render_json(&json_layout(&s), &e),
        serde_json::json!({"p": 41234, "a": "[fd00::6]:41234"})
    );
}

#[test]
fn transport_failure_reason() {
    let h = HeaderMap::new();
    let f = Format::parse("\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\"");
    assert_eq!(f.render(&entry(&h)), "\"-\"");
    let e = Entry {
        transport_failure: Some("delayed connect error: 111"),
        ..entry(&h)
    };
    assert_eq!(f.render(&e), "\"delayed_connect_error:_111\"");
    let f = Format::parse("\"%DOWNSTREAM_TRANSPORT_FAILURE_REASON%\"");
    assert_eq!(f.render(&e), "\"-\"");
    let e = Entry {
        downstream_transport_failure: Some("TLS_error:|peer sent no certificates:TLS_error_end"),
        ..entry(&h)
    };
    assert_eq!(
        f.render(&e),
        "\"TLS_error:|peer_sent_no_certificates:TLS_error_end\""
    );
}

#[test]
fn civil_dates() {
    let t = |s: u64| crate::admin::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(t(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(t(951_782_400), "2000-02-29T00:00:00.000Z");
    assert_eq!(t(4_107_542_399), "2100-02-28T23:59:59.000Z");
}
