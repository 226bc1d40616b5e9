//! `HttpProtocolOptions.outlier_detection.error_matcher` (Istio's DestinationRule
//! `outlierDetection` error codes): which upstream responses outlier detection counts as
//! failures, in place of "5xx". Envoy's router reports a matching response as its own code
//! when that is a 5xx, else as 500, and a response that does not match as 200, so that it
//! counts as a success even when it is a 5xx.

use crate::route::matcher::HeaderMatch;
use envoy_types::pb::envoy::config::common::matcher::v3::{match_predicate::Rule, MatchPredicate};

/// A compiled `MatchPredicate` over a response's headers and status.
#[derive(Debug, Clone)]
pub enum ErrorMatcher {
    /// `any_match`.
    Any,
    /// `or_match`.
    Or(Vec<ErrorMatcher>),
    /// `and_match`.
    And(Vec<ErrorMatcher>),
    /// `not_match`.
    Not(Box<ErrorMatcher>),
    /// `http_response_headers_match`: every header matcher matches (`:status` included).
    Headers(Vec<HeaderMatch>),
}

impl ErrorMatcher {
    /// Compile `p`. Predicates on requests, trailers or bodies cannot judge a response's
    /// head and are refused, rather than left to judge every response a success.
    pub fn from_proto(p: &MatchPredicate) -> Result<Self, String> {
        let all = |set: &envoy_types::pb::envoy::config::common::matcher::v3::match_predicate::MatchSet| {
            set.rules.iter().map(Self::from_proto).collect::<Result<Vec<_>, _>>()
        };
        Ok(match &p.rule {
            Some(Rule::AnyMatch(_)) => ErrorMatcher::Any,
            Some(Rule::OrMatch(set)) => ErrorMatcher::Or(all(set)?),
            Some(Rule::AndMatch(set)) => ErrorMatcher::And(all(set)?),
            Some(Rule::NotMatch(inner)) => ErrorMatcher::Not(Box::new(Self::from_proto(inner)?)),
            Some(Rule::HttpResponseHeadersMatch(h)) => ErrorMatcher::Headers(
                h.headers
                    .iter()
                    .map(HeaderMatch::from_proto)
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(
                "outlier_detection.error_matcher: only response-header predicates are supported"
                    .into(),
            ),
            None => return Err("outlier_detection.error_matcher has no rule".into()),
        })
    }

    /// Whether a response with `status` and `headers` matches.
    pub fn matches(&self, status: u16, headers: &http::HeaderMap) -> bool {
        match self {
            ErrorMatcher::Any => true,
            ErrorMatcher::Or(m) => m.iter().any(|m| m.matches(status, headers)),
            ErrorMatcher::And(m) => m.iter().all(|m| m.matches(status, headers)),
            ErrorMatcher::Not(m) => !m.matches(status, headers),
            ErrorMatcher::Headers(h) => h.iter().all(|h| h.matches_response(headers, status)),
        }
    }

    /// The status outlier detection is told of, as Envoy's router reports it.
    pub fn reported(&self, status: u16, headers: &http::HeaderMap) -> u16 {
        match self.matches(status, headers) {
            true if status >= 500 => status,
            true => 500,
            false => 200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Istio writes for `outlierDetection` error codes 429 and 503.
    fn istio(codes: &[u16]) -> ErrorMatcher {
        let rules: Vec<serde_json::Value> = codes
            .iter()
            .map(|c| {
                serde_json::json!({"http_response_headers_match": {"headers": [
                {"name": ":status", "string_match": {"exact": c.to_string()}}]}})
            })
            .collect();
        let p: MatchPredicate =
            crate::config::test_proto(serde_json::json!({"or_match": {"rules": rules}}));
        ErrorMatcher::from_proto(&p).unwrap()
    }

    #[test]
    fn responses_are_reported_as_envoys_router_reports_them() {
        let m = istio(&[429, 503]);
        let h = http::HeaderMap::new();
        // Envoy's RouterOutlierDetectionProcessTest: matched non-5xx as 500, matched 5xx as
        // itself, unmatched (5xx included) as 200.
        assert_eq!(m.reported(429, &h), 500);
        assert_eq!(m.reported(503, &h), 503);
        assert_eq!(m.reported(500, &h), 200);
        assert_eq!(m.reported(200, &h), 200);
        let body: MatchPredicate = crate::config::test_proto(
            serde_json::json!({"http_request_headers_match": {"headers": []}}),
        );
        assert!(ErrorMatcher::from_proto(&body).is_err());
    }
}
