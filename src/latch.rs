//! A one-way flag that tasks can wait for: set once, seen by every waiter, past and future.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    /// Set the flag and wake every waiter; later calls do nothing.
    pub fn set(&self) {
        // Release pairs with the Acquire in `is_set`.
        if !self.set.swap(true, Ordering::Release) {
            self.notify.notify_waiters();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the flag is set (at once if it already is).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a `set` in between is not missed.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Latch;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_before_and_after_see_it() {
        let l = Arc::new(Latch::default());
        let early = tokio::spawn({
            let l = l.clone();
            async move { l.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        l.set();
        tokio::time::timeout(Duration::from_secs(1), early)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), l.wait())
            .await
            .unwrap();
    }
}
