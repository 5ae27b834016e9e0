//! What herald-bench and herald-baseline share: the record value format the
//! clients check ([`record`]) and the pacing that offers records at a set
//! rate ([`pace`]).
//!
//! Everything else lives in the binaries: `herald-bench`'s modules are
//! declared in main.rs, herald-baseline is one file. The decision to know:
//! the baseline must produce exactly what herald-bench's producer produces,
//! at the same pace, or the comparison is void; so both use this code, and
//! a change here changes both sides of every comparison at once.

pub mod encoding;
pub mod pace;
pub mod record;
