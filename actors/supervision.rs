//! Restart budgets: how often a supervisor may restart a child before giving up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most `max` restarts within any `window`; Erlang/OTP's intensity and period.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

/// Five restarts in ten seconds: a child that fails faster than that is not recovering.
pub const DEFAULT_MAX_RESTARTS: usize = 5;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

impl Default for RestartBudget {
    fn default() -> Self {
        RestartBudget::new(DEFAULT_MAX_RESTARTS, DEFAULT_WINDOW)
    }
}

impl RestartBudget {
    pub fn new(max: usize, window: Duration) -> Self {
        RestartBudget {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Record a restart attempt now; false when the budget is spent (escalate instead).
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// Aborts a task when dropped. Actor state holds these so that a crashed actor (whose `post_stop`
/// does not run) still stops the tasks it started.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refills_after_window() {
        let mut b = RestartBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(b.allow_at(t0));
        assert!(b.allow_at(t0 + Duration::from_secs(1)));
        assert!(!b.allow_at(t0 + Duration::from_secs(2)));
        assert!(b.allow_at(t0 + Duration::from_secs(12)));
    }
}
