//! Pacing: when the next record is due at a rate that may change at any
//! moment (herald-bench's producer and herald-baseline's generator).
//!
//! It owns only the schedule; it does not send anything or know what a
//! record is. The decision to know: the schedule is absolute, not a sleep
//! per record. The n-th record after a rate change is due at
//! `change time + n / rate`, so a late wake-up is caught up at once (a burst)
//! instead of lowering the rate, and a rate change starts a new schedule.

use std::time::{Duration, Instant};

/// How long to sleep while the rate is zero before looking again.
const IDLE_POLL: Duration = Duration::from_millis(2);
/// The longest sleep towards a due time, so a rate change (or a stop) is
/// seen within it.
const MAX_SLEEP: Duration = Duration::from_millis(5);

/// The schedule since the last rate change.
pub struct Pacer {
    /// Records per second × 1000, as last seen.
    rate_milli: u64,
    since: Instant,
    /// Records sent before `since`.
    sent_before: u64,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer {
            rate_milli: 0,
            since: Instant::now(),
            sent_before: 0,
        }
    }

    /// With `sent` records sent so far at `rate_milli` (records/s × 1000):
    /// true if the next one is due now; otherwise sleeps a little (at most
    /// 5 ms) and returns false, so the caller can look at its stop flag and
    /// the rate again before it asks once more.
    pub async fn due(&mut self, rate_milli: u64, sent: u64) -> bool {
        if rate_milli != self.rate_milli {
            (self.rate_milli, self.since, self.sent_before) = (rate_milli, Instant::now(), sent);
        }
        if rate_milli == 0 {
            tokio::time::sleep(IDLE_POLL).await;
            return false;
        }
        let due = self.since
            + Duration::from_secs_f64(
                (sent - self.sent_before) as f64 * 1000.0 / rate_milli as f64,
            );
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.min(now + MAX_SLEEP).into()).await;
            return false;
        }
        true
    }
}
