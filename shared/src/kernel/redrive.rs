//! What a redriven event carries (`custody-redrive`, infra/src/redrive.rs).
//!
//! A stream record that failed all its retries may belong to a privacy request that
//! ended in `error` after its attempts. The stream alone never runs such a request
//! again (its own records with status `error` are filtered out, which is what stops
//! a failing request from looping). An operator's redrive, after the cause is fixed,
//! is the decision to try again, so the replayed event says so in this top-level
//! field; Lambda's event source mappings never set it.

/// `true` at the top level of an event replayed by an operator.
pub const FIELD: &str = "custodyRedrive";

/// Whether `event` was replayed by an operator's redrive.
pub fn is_redriven(event: &serde_json::Value) -> bool {
    event.get(FIELD).and_then(serde_json::Value::as_bool) == Some(true)
}
