//! Host selection. A load balancer reads the published host list and never blocks; it knows
//! nothing of health checking or connection pools (Pingora's split between selection and health).
//! A pick takes no lock and allocates nothing.

use super::Host;
use crate::bootstrap::LbPolicy;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub trait LoadBalancer: Send + Sync {
    /// Called by the ClusterManager whenever membership changes, before the hosts are published.
    fn rebuild(&self, hosts: &[Arc<Host>]);
    fn pick<'a>(&self, hosts: &'a [Arc<Host>]) -> Option<&'a Arc<Host>>;
}

/// The cluster's `lb_policy`. An enum rather than a trait object: the pick is a direct call.
pub enum Lb {
    RoundRobin(RoundRobin),
    LeastRequest(LeastRequest),
    Random(Random),
}

impl Lb {
    pub fn new(policy: LbPolicy) -> Lb {
        match policy {
            LbPolicy::RoundRobin => Lb::RoundRobin(RoundRobin::default()),
            LbPolicy::LeastRequest { choice_count } => {
                Lb::LeastRequest(LeastRequest::new(choice_count))
            }
            LbPolicy::Random => Lb::Random(Random),
        }
    }
}

impl LoadBalancer for Lb {
    fn rebuild(&self, hosts: &[Arc<Host>]) {
        match self {
            Lb::RoundRobin(lb) => lb.rebuild(hosts),
            Lb::LeastRequest(lb) => lb.rebuild(hosts),
            Lb::Random(lb) => lb.rebuild(hosts),
        }
    }

    fn pick<'a>(&self, hosts: &'a [Arc<Host>]) -> Option<&'a Arc<Host>> {
        match self {
            Lb::RoundRobin(lb) => lb.pick(hosts),
            Lb::LeastRequest(lb) => lb.pick(hosts),
            Lb::Random(lb) => lb.pick(hosts),
        }
    }
}

/// LEAST_REQUEST: Envoy's N choices. `choice_count` hosts are sampled at random (with
/// replacement, as Envoy does) and the one with the fewest active requests wins; ties keep the
/// earlier sample. Active requests are the host's `rq_active` (from the host pick until the
/// response ends).
///
/// With unequal weights Envoy switches to an EDF schedule over `weight / (active + 1)`; legate
/// keeps the N choices and compares that same ratio instead, which reduces to the plain
/// comparison when weights are equal and costs no schedule rebuild on every pick.
pub struct LeastRequest {
    choice_count: u32,
}

impl LeastRequest {
    pub fn new(choice_count: u32) -> Self {
        LeastRequest {
            choice_count: choice_count.max(1),
        }
    }

    /// Does `a` have more room than `b`: weight / (active + 1) larger? Compared by
    /// cross-multiplying, in integers.
    fn less_loaded(a: &Host, b: &Host) -> bool {
        // Relaxed: a load hint; a stale count only makes one pick slightly less informed.
        let active = |h: &Host| h.stats.rq_active.load(Ordering::Relaxed).saturating_add(1);
        let weight = |h: &Host| u64::from(h.weight.max(1));
        weight(a).saturating_mul(active(b)) > weight(b).saturating_mul(active(a))
    }
}

impl LoadBalancer for LeastRequest {
    fn rebuild(&self, _hosts: &[Arc<Host>]) {}

    fn pick<'a>(&self, hosts: &'a [Arc<Host>]) -> Option<&'a Arc<Host>> {
        let n = hosts.len();
        if n <= 1 {
            return hosts.first();
        }
        // fastrand's generator is thread-local: no lock, no shared cache line.
        let mut best = &hosts[fastrand::usize(..n)];
        for _ in 1..self.choice_count {
            let sampled = &hosts[fastrand::usize(..n)];
            if Self::less_loaded(sampled, best) {
                best = sampled;
            }
        }
        Some(best)
    }
}

/// RANDOM: a uniformly random host. Envoy's random balancer ignores weights; so does legate.
#[derive(Default)]
pub struct Random;

impl LoadBalancer for Random {
    fn rebuild(&self, _hosts: &[Arc<Host>]) {}

    fn pick<'a>(&self, hosts: &'a [Arc<Host>]) -> Option<&'a Arc<Host>> {
        if hosts.is_empty() {
            return None;
        }
        hosts.get(fastrand::usize(..hosts.len()))
    }
}

/// ROUND_ROBIN. With equal weights it walks the hosts in order; with weights it walks a smooth
/// weighted schedule (nginx's smooth weighted round robin, which spreads a heavy host's turns out
/// instead of bunching them), precomputed when membership changes so a pick is one atomic add.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
    schedule: arc_swap::ArcSwap<Vec<u32>>,
}

/// Schedules longer than this are scaled down; weights are relative anyway.
const MAX_SCHEDULE: u64 = 10_000;

impl RoundRobin {
    fn schedule_for(hosts: &[Arc<Host>]) -> Vec<u32> {
        let mut weights: Vec<u64> = hosts.iter().map(|h| h.weight.max(1) as u64).collect();
        if weights.iter().all(|w| *w == weights[0]) {
            return Vec::new(); // plain rotation
        }
        let g = weights.iter().copied().fold(0, gcd);
        weights.iter_mut().for_each(|w| *w /= g);
        let total: u64 = weights.iter().sum();
        if total > MAX_SCHEDULE {
            let scale = total as f64 / MAX_SCHEDULE as f64;
            weights
                .iter_mut()
                .for_each(|w| *w = ((*w as f64 / scale).round() as u64).max(1));
        }
        let total: i64 = weights.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += *w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u32);
        }
        schedule
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl LoadBalancer for RoundRobin {
    fn rebuild(&self, hosts: &[Arc<Host>]) {
        self.schedule.store(Arc::new(Self::schedule_for(hosts)));
    }

    fn pick<'a>(&self, hosts: &'a [Arc<Host>]) -> Option<&'a Arc<Host>> {
        if hosts.is_empty() {
            return None;
        }
        // Relaxed: the counter only spreads picks; no other memory is published through it.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let schedule = self.schedule.load();
        let idx = if schedule.is_empty() {
            n % hosts.len()
        } else {
            schedule[n % schedule.len()] as usize
        };
        // A schedule from an older membership may point past a shrunk list; wrap instead.
        hosts.get(idx).or_else(|| hosts.get(idx % hosts.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{endpoint_pool::EndpointPool, HostStats};
    use std::time::Duration;

    fn host(port: u16, weight: u32) -> Arc<Host> {
        let address = format!("127.0.0.1:{port}").parse().unwrap();
        Arc::new(Host {
            address,
            hostname: String::new(),
            weight,
            stats: Arc::new(HostStats::default()),
            pool: EndpointPool::new(
                address,
                Duration::from_secs(1),
                crate::bootstrap::UpstreamProtocol::Http1,
            ),
        })
    }

    fn counts(lb: &RoundRobin, hosts: &[Arc<Host>], n: usize) -> Vec<usize> {
        let mut c = vec![0; hosts.len()];
        for _ in 0..n {
            let h = lb.pick(hosts).unwrap();
            c[hosts.iter().position(|x| Arc::ptr_eq(x, h)).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_rotate() {
        let hosts = vec![host(1, 1), host(2, 1), host(3, 1)];
        let lb = RoundRobin::default();
        lb.rebuild(&hosts);
        assert_eq!(counts(&lb, &hosts, 300), vec![100, 100, 100]);
    }

    #[test]
    fn weights_are_proportional_and_smooth() {
        let hosts = vec![host(1, 5), host(2, 1), host(3, 1)];
        let lb = RoundRobin::default();
        lb.rebuild(&hosts);
        assert_eq!(counts(&lb, &hosts, 700), vec![500, 100, 100]);
        let sched = RoundRobin::schedule_for(&hosts);
        // Smooth: the heavy host never runs more than 3 times in a row in a 5:1:1 schedule.
        assert!(
            !sched.windows(4).any(|w| w.iter().all(|i| *i == 0)),
            "{sched:?}"
        );
    }

    #[test]
    fn empty_is_none() {
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest { choice_count: 2 },
            LbPolicy::Random,
        ] {
            assert!(Lb::new(policy).pick(&[]).is_none());
        }
    }

    fn index(hosts: &[Arc<Host>], h: &Arc<Host>) -> usize {
        hosts.iter().position(|x| Arc::ptr_eq(x, h)).unwrap()
    }

    #[test]
    fn least_request_avoids_the_busy_host() {
        let hosts = vec![host(1, 1), host(2, 1), host(3, 1)];
        hosts[0].stats.rq_active.store(5, Ordering::Relaxed);
        hosts[1].stats.rq_active.store(5, Ordering::Relaxed);
        // With as many choices as it takes, the idle host is (almost surely) among the samples.
        let lb = LeastRequest::new(64);
        for _ in 0..100 {
            assert_eq!(index(&hosts, lb.pick(&hosts).unwrap()), 2);
        }
    }

    #[test]
    fn least_request_two_choices_prefers_the_idle_host() {
        let hosts = vec![host(1, 1), host(2, 1)];
        hosts[0].stats.rq_active.store(3, Ordering::Relaxed);
        let lb = LeastRequest::new(2);
        let mut c = [0usize; 2];
        for _ in 0..1000 {
            c[index(&hosts, lb.pick(&hosts).unwrap())] += 1;
        }
        // The busy host wins only when both samples are it: 1 in 4.
        assert!(c[1] > 600 && c[0] > 100, "{c:?}");
    }

    #[test]
    fn least_request_weighs_active_requests_by_weight() {
        let heavy = host(1, 4);
        let light = host(2, 1);
        heavy.stats.rq_active.store(2, Ordering::Relaxed); // 4 / 3 > 1 / 1
        assert!(LeastRequest::less_loaded(&heavy, &light));
        heavy.stats.rq_active.store(4, Ordering::Relaxed); // 4 / 5 < 1 / 1
        assert!(LeastRequest::less_loaded(&light, &heavy));
    }

    #[test]
    fn random_reaches_every_host() {
        let hosts = vec![host(1, 1), host(2, 9), host(3, 1)];
        let lb = Random;
        let mut c = [0usize; 3];
        for _ in 0..3000 {
            c[index(&hosts, lb.pick(&hosts).unwrap())] += 1;
        }
        // Uniform, weights ignored: each near 1000.
        assert!(c.iter().all(|n| (700..1300).contains(n)), "{c:?}");
    }
}
