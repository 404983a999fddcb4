//! When requests are tried again ([`RetryPolicy`]) and how subscriptions reconnect
//! ([`ReconnectPolicy`]).
//!
//! Both back off exponentially with jitter: each delay is drawn between half and all of
//! `initial × 2^(n−1)`, capped, so that many clients that lost the same server do not come
//! back in the same millisecond.

use std::time::Duration;

use rand::Rng;

/// How a request is retried after a failure that may be temporary: no answer (connection
/// refused, reset or closed, a timeout) or a 502/503/504. A 4xx is never retried.
///
/// Retrying an append is safe because the client gives every event an id before the first
/// attempt: a repeat of a request the server already committed is answered with the original
/// outcome and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry). Default 4.
    pub max_attempts: u32,
    /// The delay before the first retry (default 100 ms), doubling after each.
    pub initial_backoff: Duration,
    /// The longest delay between attempts (default 2 s).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// One attempt only.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Sets the number of attempts in all (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> RetryPolicy {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the first delay and the longest one.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> RetryPolicy {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The delay after the `failures`-th failed attempt (1-based).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        jittered(self.initial_backoff, self.max_backoff, failures)
    }
}

/// How a subscription reconnects after its connection dropped, the server said it is shutting
/// down, or a reconnection failed with no answer or a 502/503/504. Any other answer (a 4xx)
/// ends the subscription with that error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Consecutive failed reconnections after which the subscription gives up and yields the
    /// last error; `None` (the default) never gives up. A connection that delivered anything
    /// resets the count.
    pub max_attempts: Option<u32>,
    /// The delay before the first reconnection (default 100 ms), doubling after each failure.
    pub initial_backoff: Duration,
    /// The longest delay between reconnections (default 5 s).
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> ReconnectPolicy {
        ReconnectPolicy {
            max_attempts: None,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ReconnectPolicy {
    /// Gives up after `attempts` consecutive failed reconnections.
    pub fn max_attempts(mut self, attempts: u32) -> ReconnectPolicy {
        self.max_attempts = Some(attempts);
        self
    }

    /// Sets the first delay and the longest one.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> ReconnectPolicy {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    pub(crate) fn delay(&self, failures: u32) -> Duration {
        jittered(self.initial_backoff, self.max_backoff, failures)
    }
}

fn jittered(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let ceiling = initial.saturating_mul(1 << exponent).min(max);
    if ceiling.is_zero() {
        return ceiling;
    }
    let half = ceiling / 2;
    half + ceiling.mul_f64(rand::rng().random_range(0.0..=0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let policy = RetryPolicy::default();
        for failures in 1..40 {
            let ceiling = Duration::from_millis(100).saturating_mul(1 << (failures - 1).min(20));
            let ceiling = ceiling.min(Duration::from_secs(2));
            let delay = policy.delay(failures);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{failures}: {delay:?}");
        }
        assert_eq!(RetryPolicy::none().max_attempts, 1);
        assert_eq!(RetryPolicy::default().max_attempts(0).max_attempts, 1);
    }
}
