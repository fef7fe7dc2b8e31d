//! `custody`: the domain and adapters every custody Lambda function links.
//!
//! One module per concept, in three layers; a module refers only to its own layer or
//! the ones below it, and no modules refer to each other in a cycle (`tests/layers.rs`
//! holds the crate to this):
//!
//! - [`kernel`]: what every adapter stands on: configuration, AWS clients, time,
//!   tenants, sealing, the table, idempotency, the audit log, retention, time zones,
//!   logs and the outbound HTTP client, and the error-to-HTTP vocabulary.
//! - [`domain`]: the adapters of the product's concepts: OAuth connections, HighLevel,
//!   export sinks, imports, webhooks, privacy requests, certificates, schedules,
//!   data subjects. Each error states its own HTTP answer (`kernel::http::HttpError`).
//! - [`edge`]: the HTTP plumbing of the API functions (`api`); it knows the kernel's
//!   vocabulary of errors, not the domain modules.
//!
//! Adapters sit behind the real AWS SDK clients; tests run them against an
//! AWS-compatible emulator (see `infra/`), never in-memory fakes.
//!
//! Every module is also re-exported at the crate root (`custody::store`,
//! `custody::api`, …): the functions address modules by concept, not by layer.

pub mod domain;
pub mod edge;
pub mod kernel;

pub use domain::{
    certificate, highlevel, import_session, imports, notice, oauth, privacy, retention_view,
    schedule, sink, subject, suppression, webhook,
};
pub use edge::api;
pub use kernel::{
    audit, aws, clock, config, egress, faults, http, idempotency, metrics, redrive, retention,
    seal, signing, startup, store, subject_index, telemetry, tenant, zone,
};

pub use kernel::tenant::TenantId;
