//! The domain adapters: one module per product concept, built on the kernel. A
//! domain module may use the kernel and other domain modules (without cycles), never
//! the edge: each error states its own HTTP answer by implementing
//! [`crate::kernel::http::HttpError`] beside its definition.

pub mod certificate;
pub mod highlevel;
pub mod import_session;
pub mod imports;
pub mod notice;
pub mod oauth;
pub mod privacy;
pub mod retention_view;
pub mod schedule;
pub mod sink;
pub mod subject;
pub mod suppression;
pub mod webhook;
