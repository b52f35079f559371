//! Exponential back-off with jitter for retry loops (consumers, batch writes).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// 100 ms doubling to 10 s, each delay drawn from [base/2, base).
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let base = 100u64.saturating_mul(1 << self.attempt.min(7)).min(10_000);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * base / 512;
        Duration::from_millis(base / 2 + jitter)
    }

    pub async fn wait(&mut self, cancel: &CancellationToken) {
        let delay = self.next_delay();
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(10_000), "{d:?}");
        }
        assert!(b.next_delay() >= Duration::from_millis(5_000));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
