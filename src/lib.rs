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
//! Kafka ─fetch (only needed partitions)─▶ ingest ─▶ fan-out ─▶ connection queue ─▶ SSE body ─▶ browser
//!                                           ▲          ▲
//!                           assign/unassign │          │ join / leave
//!                                           └── registry (dashmap) ◀── GET /v1/events
//! ```
//!
//! 1. [`subscribe`] turns a request into *slots*, one per partition needed
//!    (a key costs one partition: [`partitioner`] computes Kafka's murmur2
//!    placement), and joins each slot to its partition in the [`registry`].
//! 2. The first subscriber of a partition gives it a start offset (the high
//!    watermark, for a live stream); [`ingest`]'s one consumer thread then
//!    assigns exactly the partitions the registry needs, and releases them a
//!    linger after their last subscriber left.
//! 3. [`ingest`] copies each record into a [`record::Record`] and the
//!    [`registry`] fans it out under the partition's lock: the SSE body is
//!    encoded once per record, the `id:` line once per subscription shape,
//!    and both are shared (`Bytes`) by every connection that gets them.
//! 4. Each connection has a byte-bounded [`queue`]; its SSE body (in
//!    [`server`]) writes all that is queued in one write. A client that falls
//!    behind the bound is cut off and resumes from Kafka with its cursor.
//!    Streams over HTTP/1.x are served by [`h1`], which reads the request
//!    head itself and keeps no buffers per connection (about 2.5 KiB per
//!    idle stream, against 21 KiB through hyper); everything else, HTTP/2
//!    included, goes to hyper.
//! 5. A resuming client ([`cursor`]) is replayed from the partition's
//!    recent-records buffer, or by the shared [`catchup`] readers from Kafka,
//!    and handed to the live stream at the exact offset.
//!
//! Around the data path: [`auth`] decides who may read and write which
//! topics and keys (JWT), [`cors`] which origins may ask, and [`admission`]
//! how many streams a node and each client may hold.
//!
//! Without `--brokers` a node runs an [`embedded`] Kafka (librdkafka's mock
//! cluster) that any Kafka client can reach.

pub mod admission;
pub mod auth;
pub mod catchup;
pub mod config;
pub mod cors;
pub mod cursor;
pub mod embedded;
pub mod error;
pub mod h1;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod partitioner;
pub mod publish;
pub mod queue;
pub mod record;
pub mod registry;
pub mod server;
pub mod sse;
pub mod subscribe;

pub use config::Config;
pub use server::Node;
