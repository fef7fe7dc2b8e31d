//! Counting the requests an SDK client sends (the DSAR cost rows: the number of
//! DynamoDB requests must not grow with the table).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// An interceptor counting every attempt sent on the wire, retries included.
/// Clones share the count.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter {
    sent: Arc<AtomicU64>,
    /// The operation of each attempt (`x-amz-target` without the service prefix).
    operations: Arc<Mutex<Vec<String>>>,
}

impl RequestCounter {
    pub fn count(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.sent.store(0, Ordering::Relaxed);
        if let Ok(mut operations) = self.operations.lock() {
            operations.clear();
        }
    }

    /// Each operation sent since the last reset, with how many times, sorted.
    pub fn operations(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        if let Ok(operations) = self.operations.lock() {
            for op in operations.iter() {
                *counts.entry(op.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("?");
        let operation = target.rsplit('.').next().unwrap_or(target).to_owned();
        if let Ok(mut operations) = self.operations.lock() {
            operations.push(operation);
        }
        Ok(())
    }
}

/// A DynamoDB client on `sdk` whose requests `counter` counts.
pub fn counted_dynamodb(
    sdk: &aws_config::SdkConfig,
    counter: &RequestCounter,
) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .interceptor(counter.clone())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}
