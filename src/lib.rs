//! # herald: Kafka → Server-Sent Events, with lossless resume on any node
//!
//! Producers write records to Kafka with any client. Browsers open a plain
//! `EventSource` on any herald node and name what they want: whole topics
//! (`topic=T`) or single keys (`topic=T/KEY`). Every SSE event id is a
//! Kafka position, so a client that reconnects — to any node — resumes
//! exactly where it stopped.
//!
//! ## The data path of a node
//!
//! ```text
//! Kafka ─fetch (only needed partitions)─▶ ingest ─▶ registry fan-out ─▶ queue ─▶ http ─▶ browser
//!                                           ▲              ▲
//!                           assign/unassign │              │ join / leave
//!                                           └── subscribe ◀── api::events ◀── GET /v1/events
//! ```
//!
//! 1. [`http`] accepts, reads the request head, and routes. `GET /v1/events`
//!    goes to `api::events`, which checks the token ([`auth`]), the origin
//!    ([`cors`]) and the node's limits ([`admission`]).
//! 2. [`subscribe`] turns the request into *slots*, one per partition needed
//!    (a key costs one partition: [`partitioner`] is Kafka's murmur2), fixes
//!    each slot's start (live starts at the high watermark; the cursor's
//!    offsets; `from=`/`since=`), and joins each slot to its partition in the
//!    [`registry`]. Old positions go to the [`catchup`] readers.
//! 3. `ingest`'s one consumer thread assigns exactly the partitions the
//!    registry needs and releases them a linger after their last subscriber
//!    left. It copies each message into a [`record`] and the registry fans
//!    it out under the partition's lock ([`registry`]'s `fanout`): [`sse`]
//!    encodes the body once per record and format, the whole event once per
//!    subscription shape, shared (`Bytes`) by every connection of the shape.
//! 4. Each connection has a byte-bounded `queue`; its stream body writes all
//!    that is queued in one write. A client that falls behind the bound, or
//!    whose writes stall past the write timeout (`sweeps`), is cut off and
//!    resumes from Kafka with its cursor ([`cursor`]).
//!
//! Beside it, `presence` writes this node's stream counts and heartbeats to
//! a compacted topic and reads every node's back (as a table topic).
//!
//! Around the data path: `node` builds and stops everything (one shutdown
//! tree), `kafka` holds the clients and look-ups, `embedded` runs
//! librdkafka's mock cluster when no `--brokers` are given, and `metrics`
//! declares every Prometheus metric. `docs/architecture.md` tells the same
//! story at length, with the invariants each step keeps.

mod admission;
mod api;
pub mod auth;
mod catchup;
pub mod config;
mod cors;
pub mod cursor;
mod embedded;
mod error;
mod filters;
pub mod formats;
mod http;
mod ingest;
mod kafka;
mod metrics;
mod node;
pub mod partitioner;
mod pattern;
mod presence;
mod queue;
mod record;
mod registry;
pub mod sse;
pub mod subscribe;
mod sweeps;
mod unique_hash;

pub use config::Config;
pub use http::h1;
pub use node::{run, Node};
