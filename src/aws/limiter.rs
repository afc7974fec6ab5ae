//! An async token bucket, one per AWS account (`accounts`). Route53 allows five requests per
//! second per account, shared by every client of the account; every Route53 request (each page,
//! each GetChange poll) takes a token of its account's bucket first so the controller stays under
//! its share there.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Token bucket in its "theoretical arrival time" form (GCRA): no background task, one mutex.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time between tokens; zero disables limiting.
    interval: Duration,
    /// How many tokens may be taken back to back after a quiet period.
    burst: u32,
    /// When the bucket is empty again if nobody else takes a token.
    tat: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `rps` requests per second with a burst of 1. A non-positive or non-finite rate means no limit.
    pub fn new(rps: f64) -> Self {
        Self::with_burst(rps, 1)
    }

    /// `rps` requests per second, allowing `burst` back-to-back requests after a quiet period.
    pub fn with_burst(rps: f64, burst: u32) -> Self {
        let interval = if rps.is_finite() && rps > 0.0 {
            Duration::from_secs_f64(1.0 / rps)
        } else {
            Duration::ZERO
        };
        RateLimiter {
            interval,
            burst: burst.max(1),
            tat: Mutex::new(None),
        }
    }

    /// Wait for a token.
    pub async fn acquire(&self) {
        if self.interval.is_zero() {
            return;
        }
        let at = {
            let mut tat = self.tat.lock().await;
            let now = Instant::now();
            let t = tat.map_or(now, |t| t.max(now));
            let slack = self.interval * (self.burst - 1);
            let at = t.checked_sub(slack).map_or(now, |a| a.max(now));
            *tat = Some(t + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn eleven_acquires_at_5_rps_take_two_seconds() {
        let l = RateLimiter::new(5.0);
        let start = Instant::now();
        for _ in 0..11 {
            l.acquire().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(2), "took {took:?}");
        assert!(took < Duration::from_millis(2100), "took {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let l = std::sync::Arc::new(RateLimiter::new(5.0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire().await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        assert!(
            start.elapsed() >= Duration::from_millis(1800),
            "took {:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_free_after_quiet_period() {
        let l = RateLimiter::with_burst(5.0, 3);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        for _ in 0..3 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_means_unlimited() {
        let l = RateLimiter::new(0.0);
        let start = Instant::now();
        for _ in 0..100 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
