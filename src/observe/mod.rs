//! What operators see: stats with Envoy's names, access logs in Envoy's format.

pub mod access_log;
pub mod stats;

pub use stats::{Histogram, Stats};
