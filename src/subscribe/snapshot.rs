//! `snapshot=true`, and re-syncs: the current state of a table stream,
//! then live from exactly where that state was taken.
//!
//! 1. Each slot's partition is started (at its high watermark) if nobody
//!    reads it yet; that also starts reading its table.
//! 2. Once every slot's table is ready, all of them are captured under all
//!    their partitions' locks at once: the entries the slots select, and
//!    each slot's position set to its partition's live position.
//! 3. The entries go out paced by the client's queue, without ids: a client
//!    that loses the stream meanwhile has no cursor yet and starts afresh.
//! 4. `herald.snapshot` carries the first id: the positions the state was
//!    taken at. Only then does each slot join, from that position (the
//!    recent buffer or the catch-up readers bridge what happened meanwhile),
//!    so nothing is missed or repeated at the seam.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::error::KafkaError;
use serde_json::json;

use super::Subscriptions;
use crate::queue::{End, Stamp, Wakers};
use crate::registry::{Capture, SlotStart, Subscriber};
use crate::sse;

/// How long a snapshot waits for its tables before looking again (a table
/// also wakes it when it becomes ready or fails).
const TABLE_WAIT: Duration = Duration::from_millis(500);
/// Pauses while a client drains the snapshot it has been sent so far.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const MAX_PAUSE: Duration = Duration::from_millis(100);
/// Entries queued between wake-ups of the writer.
const WAKE_EVERY: usize = 256;
/// A client whose table cannot be served comes back after about this long.
const FAILED_RETRY_MS: u64 = 30_000;

impl Subscriptions {
    /// Delivers `sub`'s snapshot and joins its slots after it; `resync`
    /// names the partitions whose cursor was below the log start.
    pub(super) async fn snapshot(
        &self,
        sub: &Arc<Subscriber>,
        resync: Option<(Vec<serde_json::Value>, Vec<i64>)>,
    ) -> Result<(), KafkaError> {
        sub.begin_quiet();
        let mut wakers = Wakers::default();
        let mut floors = Vec::new();
        if let Some((partitions, lows)) = resync {
            floors = lows;
            self.registry.count_resync();
            let body = sse::signal_body(
                "resync",
                &json!({"reason": "cursor_below_log_start", "partitions": partitions}),
            );
            sub.connection
                .queue
                .push(&[&body], Stamp::NONE, &mut wakers);
            wakers.wake_all();
        }
        self.start_cold(sub).await?;
        let Some(taken) = self.wait_for_tables(sub, &floors).await else {
            return Ok(());
        };
        let mut keys = 0usize;
        let mut pause = FIRST_PAUSE;
        for (_, record) in taken {
            if !sub.shape.passes(&record) {
                continue;
            }
            let body = sub.shape.body(&record);
            loop {
                if sub.is_closed() {
                    return Ok(());
                }
                let pushed = {
                    let mut queue = sub.connection.queue.lock();
                    let wait = queue.is_filling(body.len()) && queue.held() > 0;
                    if !wait {
                        queue.push(&[&body], Stamp::NONE, &mut wakers);
                    }
                    !wait
                };
                if pushed {
                    pause = FIRST_PAUSE;
                    break;
                }
                wakers.wake_all();
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            keys += 1;
            if keys % WAKE_EVERY == 0 {
                wakers.wake_all();
            }
        }
        let mark = sse::signal_body("snapshot", &json!({ "keys": keys }));
        {
            let mut queue = sub.connection.queue.lock();
            let id = sse::id_line(&sub.own_cursor());
            queue.push(&[&id, &mark], Stamp::NONE, &mut wakers);
        }
        sub.end_quiet();
        for slot in 0..sub.shape.slots.len() {
            let at = SlotStart::At(sub.position(slot));
            self.join(sub, slot, at, &mut wakers);
        }
        Ok(())
    }

    /// Starts, at their high watermarks, the slots' partitions nobody reads yet.
    async fn start_cold(&self, sub: &Subscriber) -> Result<(), KafkaError> {
        let cold: Vec<usize> = (0..sub.shape.slots.len())
            .filter(|&i| !sub.shape.slots[i].log.is_started())
            .collect();
        if cold.is_empty() {
            return Ok(());
        }
        let marks = self
            .kafka
            .watermarks(cold.iter().map(|&i| super::partition_of(sub, i)).collect())
            .await?;
        for (&slot, w) in cold.iter().zip(marks) {
            self.start_at_high(sub, slot, w.high);
        }
        Ok(())
    }

    /// Waits until every slot's table is ready and captures them; `None`
    /// if the stream ended meanwhile or a table cannot be served (the
    /// client has been told).
    async fn wait_for_tables(
        &self,
        sub: &Subscriber,
        floors: &[i64],
    ) -> Option<Vec<(usize, Arc<crate::sse::Encoded>)>> {
        loop {
            let changed = self.registry.tables().changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let failed = match self.registry.capture(sub, floors) {
                Capture::Taken(taken) => return Some(taken),
                Capture::Building => None,
                Capture::TooLarge(slot) => Some((slot, "table_too_large")),
                Capture::NotATable(slot) => Some((slot, "not_a_table")),
            };
            if let Some((slot, reason)) = failed {
                let log = &sub.shape.slots[slot].log;
                let body = sse::signal_body(
                    "snapshot_failed",
                    &json!({
                        "reason": reason,
                        "topic": &*log.topic,
                        "partition": log.partition,
                        "limit_bytes": self.registry.tables().max_bytes(),
                    }),
                );
                sub.connection.queue.end(
                    End::Unavailable,
                    Some(Bytes::from(
                        [&body[..], &sse::retry_jittered(FAILED_RETRY_MS)[..]].concat(),
                    )),
                );
                return None;
            }
            if sub.is_closed() {
                return None;
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep(TABLE_WAIT) => {}
            }
        }
    }
}
