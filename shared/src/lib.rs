//! `custody`: the domain and adapters every custody Lambda function links.
//!
//! One module per concept. Adapters sit behind the real AWS SDK clients; tests run
//! them against an AWS-compatible emulator (see `infra/`), never in-memory fakes.

pub mod api;
pub mod audit;
pub mod aws;
pub mod certificate;
pub mod clock;
pub mod config;
pub mod highlevel;
pub mod http;
pub mod idempotency;
pub mod imports;
pub mod oauth;
pub mod privacy;
pub mod retention;
pub mod schedule;
pub mod seal;
pub mod sink;
pub mod store;
pub mod subject;
pub mod subject_index;
pub mod telemetry;
pub mod tenant;
pub mod webhook;
pub mod zone;

pub use tenant::TenantId;
