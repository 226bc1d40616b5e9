//! Envoy's RBAC filters, `envoy.filters.http.rbac` and `envoy.filters.network.rbac`: what
//! Istio makes of an AuthorizationPolicy. A policy matches when one of its permissions (what
//! is asked: path, method, port, ...) and one of its principals (who asks: the client
//! certificate's SPIFFE id, its address, ...) match; an ALLOW filter lets through only what a
//! policy matches, a DENY filter stops it, a LOG filter only logs.
//!
//! Dynamic metadata matchers (Istio's `requestPrincipals` and `request.auth.claims`, written
//! by Envoy's JWT filter) never match: mosn has no JWT filter and refuses requests that carry
//! a token where one is configured (see `proxy::hcm`), so no request here has JWT metadata,
//! as in Envoy for a request without a token. Matchers it cannot evaluate at all (URI
//! templates, filter state, extensions) fail closed: they match where that denies (in a DENY
//! policy, or under `not` in an ALLOW one) and not where that would allow. A policy
//! `condition` (CEL) is refused, since skipping it would widen the policy.

use crate::config::decode;
use crate::listener::chain_match::Cidr;
use crate::route::matcher::{HeaderMatch, Pseudo, StringMatch};
use crate::tls::Peer;
use envoy_types::pb::envoy::config::rbac::v3 as rpb;
use envoy_types::pb::google::protobuf::Any;
use http::HeaderMap;
use std::net::SocketAddr;

/// The HTTP filter's `@type`.
pub const HTTP_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// The network filter's `@type`.
pub const NETWORK_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// What the filter does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Log,
}

#[derive(Debug)]
enum Perm {
    Any,
    And(Vec<Perm>),
    Or(Vec<Perm>),
    Not(Box<Perm>),
    Header(HeaderMatch),
    UrlPath(StringMatch),
    DestIp(Cidr),
    DestPort(u32),
    DestPorts(i32, i32),
    Sni(StringMatch),
    Never,
    /// A matcher mosn cannot evaluate (see the module docs).
    Unknown,
}

#[derive(Debug)]
enum Prin {
    Any,
    And(Vec<Prin>),
    Or(Vec<Prin>),
    Not(Box<Prin>),
    /// `authenticated`, with its `principal_name` matcher (none: any client certificate).
    Authenticated(Option<StringMatch>),
    /// `direct_remote_ip` and `source_ip`: the peer.
    Ip(Cidr),
    /// `remote_ip`: [`Subject::remote`].
    RemoteIp(Cidr),
    Header(HeaderMatch),
    UrlPath(StringMatch),
    Never,
    /// A matcher mosn cannot evaluate (see the module docs).
    Unknown,
}

#[derive(Debug)]
struct Policy {
    name: String,
    permissions: Vec<Perm>,
    principals: Vec<Prin>,
}

/// A compiled RBAC filter.
#[derive(Debug)]
pub struct Rbac {
    action: Action,
    policies: Vec<Policy>,
}

/// What a decision looks at. `http` is absent for the network filter, where header and path
/// matchers never match.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Request headers and pseudo-headers.
    pub http: Option<(&'a HeaderMap, &'a Pseudo<'a>)>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The remote address as the HCM sees it (`remote_ip`): the peer, or with
    /// `use_remote_address` off the last `x-forwarded-for` hop, as Envoy.
    pub remote: std::net::IpAddr,
    /// The address the connection was made to (the original destination).
    pub dst: SocketAddr,
    /// The TLS client, when the connection is TLS.
    pub tls: Option<&'a Peer>,
}

impl Rbac {
    /// Compile the HTTP filter's config; `None` when it has no `rules` (no effect).
    pub fn from_http(any: &Any) -> Result<Option<Self>, String> {
        use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as P;
        let p: P = decode::unpack(any)?;
        if p.matcher.is_some() {
            return Err("RBAC: the matcher form is not supported; use rules".into());
        }
        p.rules.as_ref().map(Self::from_rules).transpose()
    }

    /// Compile the network filter's config; `None` when it has no `rules`.
    pub fn from_network(any: &Any) -> Result<Option<Self>, String> {
        use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as P;
        let p: P = decode::unpack(any)?;
        if p.matcher.is_some() {
            return Err("RBAC: the matcher form is not supported; use rules".into());
        }
        p.rules.as_ref().map(Self::from_rules).transpose()
    }

    fn from_rules(r: &rpb::Rbac) -> Result<Self, String> {
        let action = match r.action {
            0 => Action::Allow,
            1 => Action::Deny,
            2 => Action::Log,
            a => return Err(format!("RBAC: unknown action {a}")),
        };
        let mut names: Vec<&String> = r.policies.keys().collect();
        // Envoy's map has no order; a sorted one makes the reported policy stable.
        names.sort();
        let mut policies = Vec::new();
        for name in names {
            let p = &r.policies[name];
            let ctx = |e: String| format!("RBAC policy {name:?}: {e}");
            if p.condition.is_some() || p.checked_condition.is_some() {
                return Err(ctx("conditions (CEL) are not supported".into()));
            }
            policies.push(Policy {
                name: name.clone(),
                permissions: p
                    .permissions
                    .iter()
                    .map(perm)
                    .collect::<Result<_, _>>()
                    .map_err(ctx)?,
                principals: p
                    .principals
                    .iter()
                    .map(prin)
                    .collect::<Result<_, _>>()
                    .map_err(ctx)?,
            });
        }
        Ok(Rbac { action, policies })
    }

    /// Envoy's details for a denial by the policy `matched` (`none` when none matched), in
    /// `%RESPONSE_CODE_DETAILS%` (HTTP) or `%CONNECTION_TERMINATION_DETAILS%` (network):
    /// `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[N]]` for Istio's policies.
    /// Blanks become `_`, as Envoy keeps a log line's fields apart.
    pub fn denial(matched: Option<&str>) -> String {
        let id: String = matched
            .unwrap_or("none")
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        format!("rbac_access_denied_matched_policy[{id}]")
    }

    /// Whether `s` may go on, and the name of the policy that matched (if one did).
    pub fn allows(&self, s: &Subject<'_>) -> (bool, Option<&str>) {
        // Where an unknown matcher must match for the filter to fail closed.
        let deny = self.action == Action::Deny;
        let hit = self
            .policies
            .iter()
            .find(|p| {
                p.permissions.iter().any(|m| m.matches(s, deny))
                    && p.principals.iter().any(|m| m.matches(s, deny))
            })
            .map(|p| p.name.as_str());
        let allowed = match self.action {
            Action::Allow => hit.is_some(),
            Action::Deny => hit.is_none(),
            Action::Log => true,
        };
        (allowed, hit)
    }
}

fn path_matcher(
    p: &envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher,
) -> Result<StringMatch, String> {
    match &p.rule {
        Some(envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule::Path(m)) => {
            StringMatch::from_proto(m)
        }
        None => Err("url_path without a matcher".into()),
    }
}

fn perm(p: &rpb::Permission) -> Result<Perm, String> {
    use rpb::permission::Rule as R;
    let all = |v: &[rpb::Permission]| v.iter().map(perm).collect::<Result<Vec<_>, _>>();
    Ok(match &p.rule {
        Some(R::Any(true)) => Perm::Any,
        Some(R::Any(false)) | None => Perm::Never,
        Some(R::AndRules(s)) => Perm::And(all(&s.rules)?),
        Some(R::OrRules(s)) => Perm::Or(all(&s.rules)?),
        Some(R::NotRule(r)) => Perm::Not(Box::new(perm(r)?)),
        Some(R::Header(h)) => Perm::Header(HeaderMatch::from_proto(h)?),
        Some(R::UrlPath(u)) => Perm::UrlPath(path_matcher(u)?),
        Some(R::DestinationIp(c)) => Perm::DestIp(Cidr::from_proto(c)?),
        Some(R::DestinationPort(n)) => Perm::DestPort(*n),
        Some(R::DestinationPortRange(r)) => Perm::DestPorts(r.start, r.end),
        Some(R::RequestedServerName(m)) => Perm::Sni(StringMatch::from_proto(m)?),
        Some(R::Metadata(_)) => Perm::Never,
        Some(_) => Perm::Unknown,
    })
}

fn prin(p: &rpb::Principal) -> Result<Prin, String> {
    use rpb::principal::Identifier as I;
    let all = |v: &[rpb::Principal]| v.iter().map(prin).collect::<Result<Vec<_>, _>>();
    Ok(match &p.identifier {
        Some(I::Any(true)) => Prin::Any,
        Some(I::Any(false)) | None => Prin::Never,
        Some(I::AndIds(s)) => Prin::And(all(&s.ids)?),
        Some(I::OrIds(s)) => Prin::Or(all(&s.ids)?),
        Some(I::NotId(i)) => Prin::Not(Box::new(prin(i)?)),
        Some(I::Authenticated(a)) => Prin::Authenticated(
            a.principal_name
                .as_ref()
                .map(StringMatch::from_proto)
                .transpose()?,
        ),
        Some(I::SourceIp(c)) | Some(I::DirectRemoteIp(c)) => Prin::Ip(Cidr::from_proto(c)?),
        Some(I::RemoteIp(c)) => Prin::RemoteIp(Cidr::from_proto(c)?),
        Some(I::Header(h)) => Prin::Header(HeaderMatch::from_proto(h)?),
        Some(I::UrlPath(u)) => Prin::UrlPath(path_matcher(u)?),
        Some(I::Metadata(_)) => Prin::Never,
        Some(_) => Prin::Unknown,
    })
}

/// The path without its query, as `url_path` sees it.
fn bare_path<'a>(s: &Subject<'a>) -> Option<&'a str> {
    s.http
        .map(|(_, p)| p.path.split('?').next().unwrap_or(p.path))
}

impl Perm {
    /// `deny`: an unknown matcher matches (it flips under `not`).
    fn matches(&self, s: &Subject<'_>, deny: bool) -> bool {
        match self {
            Perm::Any => true,
            Perm::Never => false,
            Perm::Unknown => deny,
            Perm::And(v) => v.iter().all(|m| m.matches(s, deny)),
            Perm::Or(v) => v.iter().any(|m| m.matches(s, deny)),
            Perm::Not(m) => !m.matches(s, !deny),
            Perm::Header(h) => s.http.is_some_and(|(hm, p)| h.matches_in(hm, Some(p))),
            Perm::UrlPath(m) => bare_path(s).is_some_and(|p| m.matches(p)),
            Perm::DestIp(c) => c.contains(s.dst.ip()),
            Perm::DestPort(n) => u32::from(s.dst.port()) == *n,
            Perm::DestPorts(a, b) => (*a..*b).contains(&i32::from(s.dst.port())),
            Perm::Sni(m) => m.matches(s.tls.and_then(|t| t.sni.as_deref()).unwrap_or("")),
        }
    }
}

impl Prin {
    /// `deny`: an unknown matcher matches (it flips under `not`).
    fn matches(&self, s: &Subject<'_>, deny: bool) -> bool {
        match self {
            Prin::Any => true,
            Prin::Never => false,
            Prin::Unknown => deny,
            Prin::And(v) => v.iter().all(|m| m.matches(s, deny)),
            Prin::Or(v) => v.iter().any(|m| m.matches(s, deny)),
            Prin::Not(m) => !m.matches(s, !deny),
            Prin::Authenticated(name) => match (s.tls.filter(|t| t.authenticated()), name) {
                (None, _) => false,
                (Some(_), None) => true,
                // Envoy: any URI SAN, then any DNS SAN, then the subject.
                (Some(t), Some(m)) => {
                    t.sans.uri.iter().any(|u| m.matches(u))
                        || t.sans.dns.iter().any(|d| m.matches(d))
                        || t.subject.as_deref().is_some_and(|sub| m.matches(sub))
                }
            },
            Prin::Ip(c) => c.contains(s.peer.ip()),
            Prin::RemoteIp(c) => c.contains(s.remote),
            Prin::Header(h) => s.http.is_some_and(|(hm, p)| h.matches_in(hm, Some(p))),
            Prin::UrlPath(m) => bare_path(s).is_some_and(|p| m.matches(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::json;

    fn rbac(rules: serde_json::Value) -> Result<Option<Rbac>, String> {
        let v = json!({"@type": HTTP_URL, "rules": rules});
        let pool = mosn_proto::decode_pool();
        let p: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac =
            mosn_proto::from_json(&pool, &json!({"rules": v["rules"]}), true).unwrap();
        Rbac::from_http(&Any {
            type_url: HTTP_URL.into(),
            value: p.encode_to_vec(),
        })
    }

    fn subject<'a>(h: &'a HeaderMap, p: &'a Pseudo<'a>, port: u16) -> Subject<'a> {
        Subject {
            http: Some((h, p)),
            peer: "10.1.2.3:5000".parse().unwrap(),
            remote: [10, 1, 2, 3].into(),
            dst: SocketAddr::from(([10, 0, 0, 1], port)),
            tls: None,
        }
    }

    #[test]
    fn istio_deny_without_request_principal_and_ports() {
        // Istio's DENY for `notRequestPrincipals: ["*"]`: metadata never matches here (no JWT
        // filter), so its negation matches every request.
        let r = rbac(json!({"action": "DENY", "policies": {"p": {
            "permissions": [{"destination_port": 8080}],
            "principals": [{"not_id": {"metadata": {"filter": "istio_authn", "path": [{"key": "request.auth.principal"}],
                "value": {"string_match": {"safe_regex": {"regex": ".+"}}}}}}]}}}))
        .unwrap()
        .unwrap();
        let (h, p) = (
            HeaderMap::new(),
            Pseudo {
                method: "GET",
                path: "/",
                ..Default::default()
            },
        );
        assert_eq!(r.allows(&subject(&h, &p, 8080)), (false, Some("p")));
        assert_eq!(r.allows(&subject(&h, &p, 9090)), (true, None));
        // The source address and a port range.
        let r = rbac(json!({"policies": {"p": {
            "permissions": [{"destination_port_range": {"start": 8000, "end": 8100}}],
            "principals": [{"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}]}}}))
        .unwrap()
        .unwrap();
        assert!(r.allows(&subject(&h, &p, 8080)).0);
        assert!(!r.allows(&subject(&h, &p, 8100)).0);
    }

    #[test]
    fn matchers_mosn_cannot_evaluate_fail_closed() {
        // Istio writes `paths: [/admin/{**}]` as a URI template.
        let template = json!({"uri_template": {"name": "envoy.path.match.uri_template.uri_template_matcher",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                "path_template": "/admin/{**}"}}});
        let (h, p) = (
            HeaderMap::new(),
            Pseudo {
                method: "GET",
                path: "/home",
                ..Default::default()
            },
        );
        let policy = |action: &str, perm: serde_json::Value| {
            rbac(json!({"action": action, "policies": {"p": {"permissions": [perm], "principals": [{"any": true}]}}}))
                .unwrap()
                .unwrap()
        };
        // DENY: it matches, so the request is denied; ALLOW: it does not, so it is not let in.
        assert!(
            !policy("DENY", template.clone())
                .allows(&subject(&h, &p, 80))
                .0
        );
        assert!(
            !policy("ALLOW", template.clone())
                .allows(&subject(&h, &p, 80))
                .0
        );
        // Under `not` the sides swap, and still nothing is let through on its account.
        assert!(
            !policy("DENY", json!({"not_rule": template.clone()}))
                .allows(&subject(&h, &p, 80))
                .0
        );
        assert!(
            !policy("ALLOW", json!({"not_rule": template}))
                .allows(&subject(&h, &p, 80))
                .0
        );
    }

    #[test]
    fn log_allows_no_rules_is_no_filter_and_conditions_are_refused() {
        let r = rbac(json!({"action": "LOG", "policies": {"p": {"permissions": [{"any": true}], "principals": [{"any": true}]}}}))
            .unwrap()
            .unwrap();
        let (h, p) = (HeaderMap::new(), Pseudo::default());
        assert_eq!(r.allows(&subject(&h, &p, 1)), (true, Some("p")));
        let none = Rbac::from_http(&Any {
            type_url: HTTP_URL.into(),
            value: vec![],
        })
        .unwrap();
        assert!(none.is_none());
        let err = rbac(
            json!({"policies": {"p": {"permissions": [{"any": true}], "principals": [{"any": true}],
            "condition": {"const_expr": {"bool_value": true}}}}}),
        )
        .unwrap_err();
        assert!(err.contains("CEL"), "{err}");
    }
}
