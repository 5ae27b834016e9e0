//! Background passes over every open stream: heartbeats, id-only events for
//! idle keyed streams, and the watchdog that ends streams whose client
//! stopped reading.
//!
//! Heartbeats and idle ids visit one slice of the connections every 50 ms
//! rather than all of them at once: 15,000 streams visited in one instant
//! means 15,000 writes in one burst, and live records waiting behind them.
//! Every pass runs on the blocking pool (it takes queue and partition
//! locks) and ends when its token is cancelled, after the slice in hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::queue::{Stamp, Wakers};
use crate::registry::{Connection, Registry};
use crate::sse;

/// How often a sliced sweep visits its next slice of connections.
const SWEEP_STEP: Duration = Duration::from_millis(50);
/// At most this many slices per round (a very long period is still visited
/// in slices of at least one connection id residue).
const MAX_SLICES: usize = 10_000;

/// Sends a heartbeat comment to every stream with nothing queued, once per
/// `period`.
pub async fn heartbeats(registry: Arc<Registry>, period: Duration, stop: CancellationToken) {
    sliced(registry, period, stop, |_, connections, wakers| {
        let beat = Bytes::from_static(sse::HEARTBEAT);
        for connection in connections {
            if connection.queue.queued_bytes() == 0 {
                connection.queue.push(&[&beat], Stamp::NONE, wakers);
            }
        }
    })
    .await
}

/// Moves idle keyed streams' cursors past records of other keys, once per
/// `period` (see `Registry::advance_idle_cursors`).
pub async fn idle_cursors(registry: Arc<Registry>, period: Duration, stop: CancellationToken) {
    sliced(registry, period, stop, |registry, connections, wakers| {
        registry.advance_idle_cursors(connections, wakers);
    })
    .await
}

/// Closes streams whose client stopped reading: a write that has not
/// finished within `timeout`. Every stream is checked a few times per
/// timeout, so a stalled client holds its slot, its registry entry and its
/// queue for at most about 1.25 times the timeout.
pub async fn stalled_writers(
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let every = (timeout / 4).clamp(SWEEP_STEP, Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let (registry, metrics) = (registry.clone(), metrics.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let now = Instant::now();
            for connection in registry.connections() {
                if connection.queue.is_stalled(now, timeout) && connection.kill() {
                    metrics.stalled_disconnects.inc();
                }
            }
        })
        .await;
    }
}

/// Visits every connection once per `period`, one slice (by connection id)
/// every [`SWEEP_STEP`]. Connections opened during a round are visited from
/// the next one.
async fn sliced<F>(registry: Arc<Registry>, period: Duration, stop: CancellationToken, visit: F)
where
    F: Fn(&Registry, &[Arc<Connection>], &mut Wakers) + Send + Sync + 'static,
{
    let slices = usize::try_from(period.as_millis() / SWEEP_STEP.as_millis())
        .unwrap_or(MAX_SLICES)
        .clamp(1, MAX_SLICES);
    let step = period / u32::try_from(slices).unwrap_or(1);
    let visit = Arc::new(visit);
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: Vec<Vec<Arc<Connection>>> = Vec::new();
    loop {
        if round.is_empty() {
            round = vec![Vec::new(); slices];
            for connection in registry.connections() {
                let slice = (connection.id % slices as u64) as usize;
                round[slice].push(connection);
            }
            round.reverse(); // popped from the back: slice 0 first
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let Some(batch) = round.pop() else { continue };
        if batch.is_empty() {
            continue;
        }
        let (registry, visit) = (registry.clone(), visit.clone());
        // Takes queue (and partition) locks: keep it off the workers' hot path.
        let _ = tokio::task::spawn_blocking(move || {
            let mut wakers = Wakers::default();
            visit(&registry, &batch, &mut wakers);
        })
        .await;
    }
}
