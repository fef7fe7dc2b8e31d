//! `custody`: the domain and adapters every custody Lambda function links.
//!
//! One module per concept. Adapters sit behind the real AWS SDK clients; tests run
//! them against an AWS-compatible emulator (see `infra/`), never in-memory fakes.

pub mod api;
pub mod audit;
pub mod aws;
pub mod clock;
pub mod config;
pub mod idempotency;
pub mod retention;
pub mod seal;
pub mod store;
pub mod subject;
pub mod telemetry;
pub mod tenant;

pub use tenant::TenantId;
