//! Envoy's `Http2ProtocolOptions` as hyper HTTP/2 settings, for the downstream (HCM) and the
//! upstream (cluster) side.
//!
//! Envoy's defaults differ from hyper's: Envoy advertises 2^31 − 1 concurrent streams per
//! connection (hyper's server: 200) and accepts header blocks up to `max_request_headers_kb` /
//! `max_response_headers_kb`, 60 KiB by default (hyper: 16 KiB). A gRPC client with more
//! than 200 streams in flight, or a request with a large cookie or token, works through Envoy,
//! so it has to work through mosn. The flow-control windows keep hyper's defaults (2 MiB per
//! stream, 5 MiB per connection) unless configured: Envoy's 256 MiB defaults lean on its
//! buffer watermarks, and hyper would buffer up to the window for a slow reader.

use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use hyper_util::rt::TokioExecutor;

/// Envoy's largest (and default) `max_concurrent_streams`.
const MAX_STREAMS: u32 = (1 << 31) - 1;

/// Envoy's default header block limit, in KiB (`max_request_headers_kb`,
/// `max_response_headers_kb`).
const DEFAULT_HEADERS_KB: u32 = 60;

/// The HTTP/2 settings of one side of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// Streams open at once on one connection: the peer's, on a server; on a client, the
    /// most the pool puts on one upstream connection before it opens another, as Envoy's
    /// pool does (hyper's client also keeps to what the server advertises, by queueing).
    pub max_concurrent_streams: u32,
    /// `initial_stream_window_size`, when configured.
    pub stream_window: Option<u32>,
    /// `initial_connection_window_size`, when configured.
    pub connection_window: Option<u32>,
    /// The largest header block accepted, in bytes.
    pub max_header_list: u32,
    /// `connection_keepalive`: a PING every `interval`, the connection closed when its ACK
    /// has not come within `timeout` (Istio's DestinationRule h2 keepalive), so that a dead
    /// connection is found before a request is lost on it.
    pub keepalive: Option<(std::time::Duration, std::time::Duration)>,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            max_concurrent_streams: MAX_STREAMS,
            stream_window: None,
            connection_window: None,
            max_header_list: DEFAULT_HEADERS_KB * 1024,
            keepalive: None,
        }
    }
}

impl H2Settings {
    /// From `http2_protocol_options` and a header limit in KiB (`max_request_headers_kb` on
    /// the HCM, `max_response_headers_kb` on a cluster); unset fields take Envoy's defaults.
    /// Values outside Envoy's ranges are rejected, as Envoy's config validation does.
    pub fn from_proto(
        opts: Option<&Http2ProtocolOptions>,
        headers_kb: Option<u32>,
    ) -> Result<Self, String> {
        let mut s = H2Settings::default();
        if let Some(kb) = headers_kb {
            if !(1..=8192).contains(&kb) {
                return Err(format!(
                    "header limit of {kb} KiB is out of range: use 1 to 8192 (Envoy's range)"
                ));
            }
            s.max_header_list = kb * 1024;
        }
        let Some(o) = opts else { return Ok(s) };
        if let Some(n) = o.max_concurrent_streams.as_ref().map(|v| v.value) {
            if !(1..=MAX_STREAMS).contains(&n) {
                return Err(format!(
                    "http2_protocol_options.max_concurrent_streams {n} is out of range: use 1 \
                     to {MAX_STREAMS}"
                ));
            }
            s.max_concurrent_streams = n;
        }
        let window = |name: &str, v: Option<u32>| match v {
            Some(w) if !(65_535..=MAX_STREAMS).contains(&w) => Err(format!(
                "http2_protocol_options.{name} {w} is out of range: use 65535 to {MAX_STREAMS}"
            )),
            w => Ok(w),
        };
        s.stream_window = window(
            "initial_stream_window_size",
            o.initial_stream_window_size.as_ref().map(|v| v.value),
        )?;
        s.connection_window = window(
            "initial_connection_window_size",
            o.initial_connection_window_size.as_ref().map(|v| v.value),
        )?;
        if let Some(k) = &o.connection_keepalive {
            let interval = crate::config::opt_duration(&k.interval).filter(|d| !d.is_zero());
            let timeout = crate::config::opt_duration(&k.timeout)
                .filter(|d| !d.is_zero())
                .ok_or("http2_protocol_options.connection_keepalive needs a timeout")?;
            // Without an interval Envoy pings only after idle spells, which hyper cannot.
            s.keepalive = interval.map(|i| (i, timeout));
        }
        Ok(s)
    }

    /// Applies the settings to a downstream connection's builder.
    pub fn server(&self, b: &mut hyper::server::conn::http2::Builder<TokioExecutor>) {
        b.max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list);
        if let Some(w) = self.stream_window {
            b.initial_stream_window_size(w);
        }
        if let Some(w) = self.connection_window {
            b.initial_connection_window_size(w);
        }
        if let Some((interval, timeout)) = self.keepalive {
            b.keep_alive_interval(interval).keep_alive_timeout(timeout);
        }
    }

    /// Applies the settings to an upstream connection's builder.
    pub fn client(&self, b: &mut hyper::client::conn::http2::Builder<TokioExecutor>) {
        b.max_header_list_size(self.max_header_list);
        if let Some(w) = self.stream_window {
            b.initial_stream_window_size(w);
        }
        if let Some(w) = self.connection_window {
            b.initial_connection_window_size(w);
        }
        if let Some((interval, timeout)) = self.keepalive {
            // Envoy pings whether or not streams are open.
            b.keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn opts(streams: Option<u32>, window: Option<u32>) -> Http2ProtocolOptions {
        Http2ProtocolOptions {
            max_concurrent_streams: streams.map(|value| UInt32Value { value }),
            initial_stream_window_size: window.map(|value| UInt32Value { value }),
            ..Default::default()
        }
    }

    #[test]
    fn unset_fields_take_envoys_defaults() {
        let s = H2Settings::from_proto(Some(&opts(None, None)), None).unwrap();
        assert_eq!(s, H2Settings::default());
        assert_eq!(s.max_concurrent_streams, 2_147_483_647);
        assert_eq!(s.max_header_list, 61_440);
        let s = H2Settings::from_proto(Some(&opts(Some(7), Some(1 << 20))), Some(96)).unwrap();
        assert_eq!(
            (s.max_concurrent_streams, s.stream_window, s.max_header_list),
            (7, Some(1 << 20), 96 * 1024)
        );
    }

    #[test]
    fn out_of_range_values_are_rejected_with_the_range() {
        let e = H2Settings::from_proto(Some(&opts(Some(0), None)), None).unwrap_err();
        assert!(
            e.contains("max_concurrent_streams 0") && e.contains("use 1 to"),
            "{e}"
        );
        let e = H2Settings::from_proto(Some(&opts(None, Some(100))), None).unwrap_err();
        assert!(e.contains("initial_stream_window_size 100"), "{e}");
        let e = H2Settings::from_proto(None, Some(9000)).unwrap_err();
        assert!(e.contains("9000 KiB"), "{e}");
    }
}
