//! Unit tests of host selection: priority loads, panic mode, weighted round robin, and the
//! consistent-hash tables as levels keep them.

use super::*;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;

#[test]
fn priority_loads_follow_envoys_arithmetic() {
    // Envoy's documented examples: P0 healthy takes all; at 50% healthy its health is
    // 70, so 30% spills; a level at 1/1.4 of its hosts or more keeps all its load.
    assert_eq!(health(4, 0), 100);
    assert_eq!(health(2, 1), 70);
    assert_eq!(health(10, 2), 100);
    assert_eq!(health(0, 0), 0);
    assert_eq!(priority_loads(&[100, 100]), [100, 0]);
    assert_eq!(priority_loads(&[70, 100]), [70, 30]);
    assert_eq!(priority_loads(&[0, 70]), [0, 100]);
    assert_eq!(priority_loads(&[20, 20]), [50, 50], "scaled to the total");
    assert_eq!(priority_loads(&[0, 0, 0]), [100, 0, 0]);
    assert_eq!(
        priority_loads(&[33, 33, 33]),
        [34, 33, 33],
        "rounding's remainder"
    );
}

fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Arc::new(Host::new(
                format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                String::new(),
                *w,
                0,
            ))
        })
        .collect()
}

#[test]
fn panic_needs_the_levels_short_of_healthy_hosts_too() {
    // With a threshold of 80%: 3 of 4 healthy is below it, but the level's health is
    // still 100 (75% x 1.4), so no panic and the unhealthy host gets nothing; at 2 of 4
    // the health is 70 and the level panics.
    let policy = LbPolicy::RoundRobin;
    let with_down = |down: usize| {
        let hs = (0..4)
            .map(|i| {
                let h = Host::new(
                    format!("127.0.0.1:{}", 2000 + i).parse().unwrap(),
                    String::new(),
                    1,
                    0,
                );
                let status = if i < down {
                    HealthStatus::Unhealthy
                } else {
                    HealthStatus::Healthy
                };
                Arc::new(h.with_eds_status(status as i32))
            })
            .collect();
        HostSet::new(hs, &policy, LbOptions::default())
    };
    let picks_down = |set: &HostSet, down: usize| {
        (0..40).any(|_| {
            let h = set.choose(&policy, 80.0, &LbContext::default()).unwrap();
            (h.addr.port() as usize) < 2000 + down
        })
    };
    assert!(!picks_down(&with_down(1), 1));
    assert!(picks_down(&with_down(2), 2));
}

#[test]
fn smooth_wrr_is_exact_and_interleaved() {
    let seq = smooth_wrr(&hosts(&[5, 1, 1]));
    // nginx's smooth WRR order for 5:1:1 spreads the light hosts out.
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn hash_policies_are_sticky_and_skip_excluded() {
    for p in [
        LbPolicy::RingHash {
            min_size: 1024,
            max_size: 1 << 23,
            hash_fn: table::RingHashFn::XxHash,
            use_hostname: false,
        },
        LbPolicy::Maglev {
            table_size: 65537,
            use_hostname: false,
        },
    ] {
        let set = HostSet::new(hosts(&[1, 1, 1, 1]), &p, LbOptions::default());
        let ctx = LbContext {
            hash: Some(42),
            ..Default::default()
        };
        let a = set.choose(&p, 50.0, &ctx).unwrap().addr;
        for _ in 0..10 {
            assert_eq!(set.choose(&p, 50.0, &ctx).unwrap().addr, a);
        }
        let ex = [a];
        let avoiding = |attempts| {
            let ctx = LbContext {
                hash: Some(42),
                exclude: &ex,
                host_selection_attempts: attempts,
                ..Default::default()
            };
            set.choose(&p, 50.0, &ctx).unwrap().addr
        };
        assert_ne!(avoiding(1), a, "{p:?}");
        assert_eq!(avoiding(1), avoiding(5), "the first other host is taken");
    }
}

#[test]
fn a_down_host_leaves_the_hash_table_until_it_is_back() {
    let p = LbPolicy::Maglev {
        table_size: 65537,
        use_hostname: false,
    };
    let hs = hosts(&[1, 1, 1, 1]);
    let set = HostSet::new(hs.clone(), &p, LbOptions::default());
    let pick = |h: u64| {
        let ctx = LbContext {
            hash: Some(h),
            ..Default::default()
        };
        set.choose(&p, 0.0, &ctx).unwrap().addr
    };
    let before: Vec<_> = (0..400u64)
        .map(|k| pick(hash::hash64(&k.to_le_bytes())))
        .collect();
    // An ejection of 50 ms (the detector's defaults otherwise).
    let mut cfg = crate::cluster::outlier::OutlierConfig::from_proto(&Default::default());
    cfg.base_ejection = std::time::Duration::from_millis(50);
    cfg.max_ejection = cfg.base_ejection;
    cfg.interval = std::time::Duration::from_millis(1);
    hs[0].outlier.eject(&cfg, Instant::now());
    let during: Vec<_> = (0..400u64)
        .map(|k| pick(hash::hash64(&k.to_le_bytes())))
        .collect();
    assert!(!during.contains(&hs[0].addr));
    let moved: std::collections::BTreeSet<_> = before
        .iter()
        .zip(&during)
        .filter(|(b, _)| **b == hs[0].addr)
        .map(|(_, d)| *d)
        .collect();
    assert!(moved.len() >= 2, "the down host's keys spread: {moved:?}");
    std::thread::sleep(std::time::Duration::from_millis(60));
    let after: Vec<_> = (0..400u64)
        .map(|k| pick(hash::hash64(&k.to_le_bytes())))
        .collect();
    assert_eq!(after, before, "the table is rebuilt with the host back");
}

#[test]
fn a_locality_short_of_healthy_hosts_takes_less() {
    // Zone 0 (weight 1): one host; zone 1 (weight 3): two hosts, one of them down. Zone 1's
    // health is 1.4 × 1/2 = 0.7, so its effective weight is 2.1 and zone 0 takes 1/3.1.
    let hs: Vec<Arc<Host>> = (0..3)
        .map(|i| {
            let h = Host::new(
                format!("127.0.0.1:{}", 3000 + i).parse().unwrap(),
                String::new(),
                1,
                0,
            );
            let h = h.with_locality(u32::from(i > 0), if i > 0 { 3 } else { 1 });
            let status = if i == 2 {
                HealthStatus::Unhealthy
            } else {
                HealthStatus::Healthy
            };
            Arc::new(h.with_eds_status(status as i32))
        })
        .collect();
    let policy = LbPolicy::RoundRobin;
    let set = HostSet::new(
        hs.clone(),
        &policy,
        LbOptions {
            by_locality: true,
            ..Default::default()
        },
    );
    let n = 4000;
    let zone0 = (0..n)
        .filter(|_| {
            set.choose(&policy, 50.0, &LbContext::default())
                .unwrap()
                .addr
                == hs[0].addr
        })
        .count();
    let p = 1.0 / 3.1;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (zone0 as f64 - n as f64 * p).abs() < 5.0 * sigma,
        "{zone0} of {n}"
    );
}

#[test]
fn a_host_in_slow_start_takes_a_small_share_first() {
    // Two equal hosts, one just added, with a 60 s window and the default 10% floor: the new
    // one takes 0.1 / 1.1 of the picks, the other the rest; without slow start, half each.
    let mut new = Host::new("127.0.0.1:4001".parse().unwrap(), String::new(), 1, 0);
    new.added = Some(Instant::now());
    let old = Host::new("127.0.0.1:4000".parse().unwrap(), String::new(), 1, 0);
    let hs = vec![Arc::new(old), Arc::new(new)];
    let cluster: envoy_types::pb::envoy::config::cluster::v3::Cluster =
        crate::config::test_proto(serde_json::json!({"name": "c", "round_robin_lb_config": {
            "slow_start_config": {"slow_start_window": "60s"}}}));
    let opts = LbOptions::from_proto(&cluster);
    assert!(opts.slow_start.is_some());
    let policy = LbPolicy::RoundRobin;
    let n = 4000;
    let share = |opts: LbOptions| {
        let set = HostSet::new(hs.clone(), &policy, opts);
        (0..n)
            .filter(|_| {
                set.choose(&policy, 50.0, &LbContext::default())
                    .unwrap()
                    .addr
                    == hs[1].addr
            })
            .count()
    };
    let p = 0.1 / 1.1;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let got = share(opts);
    assert!(
        (got as f64 - n as f64 * p).abs() < 5.0 * sigma,
        "{got} of {n}"
    );
    assert_eq!(share(LbOptions::default()), n / 2);
}

#[test]
fn skipped_priorities_give_their_load_to_the_others_while_any_has_health() {
    let hs: Vec<Arc<Host>> = (0..2)
        .map(|p| {
            Arc::new(Host::new(
                format!("127.0.0.1:{}", 5000 + p).parse().unwrap(),
                String::new(),
                1,
                p,
            ))
        })
        .collect();
    let policy = LbPolicy::RoundRobin;
    let set = HostSet::new(hs.clone(), &policy, LbOptions::default());
    let pick = |skip: &[u32]| {
        let ctx = LbContext {
            skip_priorities: skip,
            ..Default::default()
        };
        set.choose(&policy, 50.0, &ctx).unwrap().priority
    };
    assert!((0..20).all(|_| pick(&[]) == 0), "P0 healthy takes all");
    assert!((0..20).all(|_| pick(&[0]) == 1), "P0 skipped");
    assert!(
        (0..20).all(|_| pick(&[0, 1]) == 0),
        "all skipped: as if none were"
    );
}
