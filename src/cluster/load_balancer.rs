//! Host selection. A load balancer reads the published host list and never blocks; it knows
//! nothing of health checking or connection pools (Pingora's split between selection and health).

use super::Host;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub trait LoadBalancer: Send + Sync {
    /// Called by the ClusterManager whenever membership changes, before the hosts are published.
    fn rebuild(&self, hosts: &[Arc<Host>]);
    fn pick<'a>(&self, hosts: &'a [Arc<Host>]) -> Option<&'a Arc<Host>>;
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
        let lb = RoundRobin::default();
        assert!(lb.pick(&[]).is_none());
    }
}
