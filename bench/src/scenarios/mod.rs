//! The scenarios of the targets in docs/architecture.md, one command each: what to connect, what to
//! produce and what to report. Each says only what is its own; starting and
//! stopping the server, the clients and the producer, measuring and
//! writing the result are the engine's ([`crate::engine`]).
//!
//! The decision to know: a scenario returns its whole result as JSON (the
//! `--json` file, read by scripts/bench-report.py), with `ok` false when it
//! found a problem; main.rs exits non-zero on that. Keys of that JSON are
//! an interface: rename none without changing the report script.

mod churn;
mod cursor;
mod decode;
mod floor;
mod flows;
mod idle;
mod publish;
mod resume;
mod side;
mod smoke;
mod tables;

pub use churn::churn_scenario;
pub use cursor::cursor_sizes;
pub use decode::decode;
pub use floor::floor;
pub use flows::{broadcast, filters, keyed, latency};
pub use idle::idle;
pub use publish::publish;
pub use resume::resume;
pub use side::side_by_side;
pub use smoke::smoke;
pub use tables::tables;
