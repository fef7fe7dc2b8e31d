//! The floor of the crate: modules that know nothing of the domain or the HTTP API.
//! They refer only to each other (without cycles) and to outside crates.

pub mod audit;
pub mod aws;
pub mod clock;
pub mod config;
pub mod egress;
pub mod faults;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod redrive;
pub mod retention;
pub mod seal;
pub mod signing;
pub mod startup;
pub mod store;
// In the kernel rather than beside `subject`: a store entity that refers only to
// `store` and `tenant`; `imports` and the DSAR function use it.
pub mod subject_index;
pub mod telemetry;
pub mod tenant;
pub mod zone;
