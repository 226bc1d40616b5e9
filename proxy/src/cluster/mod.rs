//! Upstream clusters: STATIC, STRICT_DNS, LOGICAL_DNS, EDS (endpoints from `load_assignment`
//! here; xDS later) and ORIGINAL_DST, each with HTTP/1.1 and h2 connection pools, circuit breakers,
//! outlier detection and Envoy's per-cluster stats.

mod breakers;
pub mod connector;
mod dns;
pub mod error_matcher;
mod h1body;
pub mod h1conn;
mod h1framing;
pub mod h1pool;
pub mod h2pool;
pub mod host;
mod http_options;
use breakers::breakers;
pub use breakers::Breakers;
pub use http_options::AutoSni;
pub mod outlier;
mod pending;
pub mod proxy_header;
mod requests;
mod socket_config;
pub use requests::RqGuard;
pub mod conn_info;
pub mod stats;
pub mod transport;
pub mod wear;

use crate::config::opt_duration;
use crate::lb::{HostSet, LbContext, LbPolicy};
use arc_swap::ArcSwap;
use bytes::Bytes;
use connector::{BoxError, CountingConnector};
use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use host::Host;
use http_body_util::combinators::UnsyncBoxBody;
use outlier::OutlierConfig;
use stats::ClusterStats;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Request body type sent upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// How a cluster finds its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Fixed addresses.
    Static,
    /// Every address of every hostname, refreshed.
    StrictDns,
    /// The first address of the hostname, refreshed.
    LogicalDns,
    /// Endpoint discovery (from `load_assignment` until xDS delivers).
    Eds,
    /// The downstream connection's original destination (or an HTTP header).
    OriginalDst {
        /// Header to read the destination from, when `use_http_header` is set.
        header: Option<http::HeaderName>,
        /// `upstream_port_override`.
        port_override: Option<u16>,
    },
}

/// Upstream HTTP version choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 prior knowledge (h2c).
    Http2,
    /// Whatever the downstream request used.
    UseDownstream,
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Name.
    pub name: String,
    /// Discovery type.
    pub discovery: Discovery,
    /// LB policy.
    pub lb: LbPolicy,
    /// Locality weights and slow start.
    pub lb_options: crate::lb::LbOptions,
    hosts: ArcSwap<HostSet>,
    /// DNS targets (hostname, port, weight, priority) for DNS clusters.
    dns_targets: Vec<(String, u16, u32, u32)>,
    dns_refresh: Duration,
    /// `dns_lookup_family`.
    dns_family: i32,
    /// Unix-socket endpoints (`pipe`), kept for the xDS/SDS clients.
    pub pipes: Vec<String>,
    /// HTTP/1.1 connections.
    pub h1: Arc<h1pool::H1Pool>,
    /// HTTP/2 connections.
    pub h2: Arc<h2pool::H2Pool>,
    /// Upstream protocol.
    pub protocol: UpstreamProtocol,
    /// Circuit breakers.
    pub breakers: Breakers,
    /// Outlier detection, if configured.
    pub outlier: Option<OutlierConfig>,
    /// Which responses outlier detection counts as failures (`error_matcher`), instead of 5xx.
    pub error_matcher: Option<error_matcher::ErrorMatcher>,
    /// `common_lb_config.healthy_panic_threshold`, percent (Envoy's default 50; 0 = never).
    pub panic_threshold: f64,
    /// TLS per endpoint (`transport_socket`, `transport_socket_matches`).
    pub transport: transport::Transport,
    /// Opens and counts this cluster's upstream TCP connections (connect timeout,
    /// `max_connections`, `upstream_bind_config`); the pools and tcp_proxy dial through it.
    pub connector: CountingConnector,
    /// Stats.
    pub stats: Arc<ClusterStats>,
    /// The proto as configured (for `/config_dump`).
    pub proto: cpb::Cluster,
}

impl Cluster {
    /// Build a cluster from its proto. DNS resolution starts with [`Cluster::start`].
    pub fn from_proto(
        c: &cpb::Cluster,
        store: &Arc<crate::stats::Stats>,
    ) -> Result<Arc<Self>, String> {
        use cpb::cluster::ClusterDiscoveryType as D;
        let kind = match &c.cluster_discovery_type {
            Some(D::Type(t)) => *t,
            None => 0,
            Some(D::ClusterType(t)) => {
                return Err(format!("custom cluster type {} unsupported", t.name))
            }
        };
        let mut lb = LbPolicy::from_proto(c)?;
        let discovery = match kind {
            0 => Discovery::Static,
            1 => Discovery::StrictDns,
            2 => Discovery::LogicalDns,
            3 => Discovery::Eds,
            4 => {
                let (mut header, mut port_override) = (None, None);
                if let Some(cpb::cluster::LbConfig::OriginalDstLbConfig(o)) = &c.lb_config {
                    if o.use_http_header {
                        let n = if o.http_header_name.is_empty() {
                            "x-envoy-original-dst-host"
                        } else {
                            &o.http_header_name
                        };
                        header = Some(
                            http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                                .map_err(|_| "bad http_header_name")?,
                        );
                    }
                    port_override = o.upstream_port_override.as_ref().map(|p| p.value as u16);
                }
                lb = LbPolicy::ClusterProvided;
                Discovery::OriginalDst {
                    header,
                    port_override,
                }
            }
            t => return Err(format!("cluster type {t} unsupported")),
        };
        if lb == LbPolicy::ClusterProvided && !matches!(discovery, Discovery::OriginalDst { .. }) {
            return Err("CLUSTER_PROVIDED lb_policy needs an ORIGINAL_DST cluster".into());
        }
        let mut static_hosts = Vec::new();
        let mut dns_targets = Vec::new();
        let mut pipes = Vec::new();
        if let Some(la) = &c.load_assignment {
            for (index, group) in la.endpoints.iter().enumerate() {
                let locality = host::locality_of(index, group);
                for ep in &group.lb_endpoints {
                    let weight = ep
                        .load_balancing_weight
                        .as_ref()
                        .map(|w| w.value)
                        .unwrap_or(1);
                    let Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
                        continue;
                    };
                    match address(e.address.as_ref())? {
                        Addr::Pipe(p) => pipes.push(p),
                        Addr::Socket(host, port) => match host.parse::<std::net::IpAddr>() {
                            Ok(ip)
                                if !matches!(
                                    discovery,
                                    Discovery::StrictDns | Discovery::LogicalDns
                                ) =>
                            {
                                static_hosts.push(Arc::new(
                                    Host::new(
                                        SocketAddr::new(ip, port),
                                        e.hostname.clone(),
                                        weight,
                                        group.priority,
                                    )
                                    .with_eds_status(ep.health_status)
                                    .with_socket_match(ep.metadata.as_ref())
                                    .with_locality(locality.0, locality.1),
                                ))
                            }
                            _ if matches!(
                                discovery,
                                Discovery::StrictDns | Discovery::LogicalDns
                            ) =>
                            {
                                dns_targets.push((host, port, weight, group.priority))
                            }
                            _ => {
                                return Err(format!(
                                    "{host:?} is not an IP address (cluster type needs IPs)"
                                ))
                            }
                        },
                    }
                }
            }
        }
        if discovery == Discovery::LogicalDns && dns_targets.len() > 1 {
            return Err("LOGICAL_DNS clusters take exactly one endpoint".into());
        }
        let http = http_options::HttpOptions::from_cluster(c)?;
        let protocol = http.protocol;
        let stats = ClusterStats::new(store, &c.name);
        let breakers = breakers(c.circuit_breakers.as_ref(), store, &c.name);
        let connect_timeout = opt_duration(&c.connect_timeout)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(5));
        let connector = CountingConnector::new(
            stats.clone(),
            connect_timeout,
            breakers.max_connections,
            socket_config::bind_source(c)?,
            socket_config::tcp_keepalive(c),
        );
        let limits = http.limits;
        let h1 = h1pool::H1Pool::new(
            connector.clone(),
            http.idle_timeout,
            breakers.max_pending,
            limits,
        );
        let lb_options = crate::lb::LbOptions::from_proto(c);
        let set = HostSet::new(static_hosts, &lb, lb_options);
        let cluster = Cluster {
            name: c.name.clone(),
            discovery,
            hosts: ArcSwap::from_pointee(set),
            dns_targets,
            dns_refresh: opt_duration(&c.dns_refresh_rate)
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(5)),
            dns_family: c.dns_lookup_family,
            pipes,
            h1,
            h2: h2pool::H2Pool::new(
                connector.clone(),
                http.idle_timeout,
                limits,
                http.h2,
                breakers.max_pending,
            ),
            protocol,
            breakers,
            outlier: c.outlier_detection.as_ref().map(OutlierConfig::from_proto),
            panic_threshold: panic_threshold(c),
            transport: transport::Transport::from_cluster(c, &http.auto_sni)?,
            // Only outlier detection reads it.
            error_matcher: http.error_matcher.filter(|_| c.outlier_detection.is_some()),
            connector,
            stats,
            proto: c.clone(),
            lb,
            lb_options,
        };
        cluster.update_membership();
        Ok(Arc::new(cluster))
    }

    /// Start background work (DNS refresh). Must run inside the Tokio runtime. The returned
    /// receiver fires once the cluster is initialised (first DNS round done).
    pub fn start(self: &Arc<Self>) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if matches!(self.discovery, Discovery::StrictDns | Discovery::LogicalDns)
            && !self.dns_targets.is_empty()
        {
            return Some(dns::spawn(Arc::downgrade(self)));
        }
        None
    }

    /// The current host set.
    pub fn hosts(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// Replace the host set (DNS refresh now; EDS updates next).
    pub fn set_hosts(&self, hosts: Vec<Arc<Host>>) {
        self.hosts
            .store(Arc::new(HostSet::new(hosts, &self.lb, self.lb_options)));
        self.update_membership();
    }

    fn update_membership(&self) {
        let set = self.hosts.load();
        self.stats.membership_total.set(set.all.len() as u64);
        let now = std::time::Instant::now();
        self.stats
            .membership_healthy
            .set(set.all.iter().filter(|h| !h.is_down(|| now)).count() as u64);
    }

    /// For an ORIGINAL_DST cluster, where a connection addressed to `dst` goes
    /// (`upstream_port_override` applied); `None` for other clusters.
    pub fn original_dst_target(&self, mut dst: SocketAddr) -> Option<SocketAddr> {
        let Discovery::OriginalDst { port_override, .. } = &self.discovery else {
            return None;
        };
        if let Some(p) = port_override {
            dst.set_port(*p);
        }
        Some(dst)
    }

    /// Pick a host with the cluster's LB policy.
    pub fn choose(&self, ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        self.hosts
            .load()
            .choose(&self.lb, self.panic_threshold, ctx)
    }

    /// Whether a request that arrived over `downstream` goes upstream as HTTP/2.
    pub fn is_h2(&self, downstream: http::Version) -> bool {
        match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::UseDownstream => downstream == http::Version::HTTP_2,
        }
    }

    /// The status outlier detection is told of for a response: as it is, or as the
    /// cluster's `error_matcher` judges it (see [`error_matcher`]).
    pub fn outlier_status(&self, status: u16, headers: &http::HeaderMap) -> u16 {
        self.error_matcher
            .as_ref()
            .map_or(status, |m| m.reported(status, headers))
    }

    /// Record an upstream result for outlier detection. `status` None = local-origin failure.
    pub fn record_result(&self, host: &Host, status: Option<u16>) {
        let Some(cfg) = &self.outlier else { return };
        if status.is_some_and(|s| s < 500) {
            host.outlier.success();
            // Ejections end lazily; keep the gauges honest once they have.
            if self.stats.ejections_active.get() > 0 {
                self.refresh_ejection_gauges();
            }
            return;
        }
        if let Some(reason) = host.outlier.failure(status, cfg) {
            let now = std::time::Instant::now();
            let set = self.hosts.load();
            let ejected = set.all.iter().filter(|h| h.outlier.is_ejected(now)).count();
            // max_ejection_percent caps ejections, but one host may always be ejected.
            if ejected > 0 && ejected * 100 >= set.all.len() * cfg.max_ejection_percent as usize {
                self.stats.ejections_overflow.inc();
                return;
            }
            host.outlier.eject(cfg, now);
            self.stats.ejections_total.inc();
            match reason {
                outlier::Ejection::Consecutive5xx => self.stats.ejections_5xx.inc(),
                outlier::Ejection::ConsecutiveGateway => self.stats.ejections_gateway.inc(),
                outlier::Ejection::ConsecutiveLocalOrigin => self.stats.ejections_local.inc(),
            }
            tracing::info!(cluster = %self.name, host = %host.addr, ?reason, "outlier ejected");
        }
        self.refresh_ejection_gauges();
    }

    /// Recompute `outlier_detection.ejections_active` and `membership_healthy`.
    fn refresh_ejection_gauges(&self) {
        let now = std::time::Instant::now();
        let set = self.hosts.load();
        let ejected = set.all.iter().filter(|h| h.outlier.is_ejected(now)).count() as u64;
        self.stats.ejections_active.set(ejected);
        self.stats
            .membership_healthy
            .set(set.all.iter().filter(|h| !h.is_down(|| now)).count() as u64);
    }

    /// Try to take a retry slot (`max_retries` breaker); release it with [`Cluster::end_retry`].
    pub fn begin_retry(&self) -> bool {
        let n = self.breakers.active_retries.fetch_add(1, Ordering::Relaxed);
        let max = self.breakers.max_retries_now(
            self.stats.rq_active.get(),
            self.stats.rq_pending_active.get(),
        );
        if n >= max {
            self.breakers.active_retries.fetch_sub(1, Ordering::Relaxed);
            self.stats.rq_retry_overflow.inc();
            return false;
        }
        true
    }

    /// Release a retry slot.
    pub fn end_retry(&self) {
        self.breakers.active_retries.fetch_sub(1, Ordering::Relaxed);
    }

    /// Set the `circuit_breakers.*` gauges from the counts now (see [`Breakers::refresh`]).
    pub fn refresh_breaker_gauges(&self) {
        self.breakers.refresh([
            self.connector.connections(),
            self.stats.rq_pending_active.get(),
            self.stats.rq_active.get(),
            self.breakers.active_retries.load(Ordering::Relaxed),
        ]);
    }
}

/// A decoded `core.v3.Address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// host (IP or name) and port.
    Socket(String, u16),
    /// Unix socket path (relative paths resolve from the working directory).
    Pipe(String),
}

/// Decode an Address proto.
pub fn address(a: Option<&core::Address>) -> Result<Addr, String> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier as P;
    match a.and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(s)) => match &s.port_specifier {
            Some(P::PortValue(p)) => Ok(Addr::Socket(
                s.address.clone(),
                u16::try_from(*p).map_err(|_| format!("bad port {p}"))?,
            )),
            Some(P::NamedPort(n)) => Err(format!("named port {n:?} unsupported")),
            None => Ok(Addr::Socket(s.address.clone(), 0)),
        },
        Some(A::Pipe(p)) => Ok(Addr::Pipe(p.path.clone())),
        Some(A::EnvoyInternalAddress(_)) => Err("internal addresses are not supported".into()),
        None => Err("address missing".into()),
    }
}

/// `common_lb_config.healthy_panic_threshold` in percent: Envoy's default is 50, and Istio
/// writes a DestinationRule's `minHealthPercent` here (0, which turns panic mode off, unless
/// set).
fn panic_threshold(c: &cpb::Cluster) -> f64 {
    c.common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
        .map_or(50.0, |p| p.value.clamp(0.0, 100.0))
}
