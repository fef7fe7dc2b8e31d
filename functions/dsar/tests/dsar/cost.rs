//! Cost: processing a subject with 10 records takes the same number of DynamoDB
//! requests in a table of 1 000 items as in one of 100 000, counted by an interceptor
//! on the SDK client the function uses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use dsar::{Budget, Progress};
use futures_util::StreamExt as _;

use crate::*;

/// Counts every DynamoDB request sent (each attempt), by operation.
#[derive(Debug, Clone, Default)]
struct RequestCounter {
    total: Arc<AtomicUsize>,
    operations: Arc<Mutex<Vec<String>>>,
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
        self.total.fetch_add(1, Ordering::SeqCst);
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("?")
            .trim_start_matches("DynamoDB_20120810.")
            .to_owned();
        self.operations.lock().unwrap().push(target);
        Ok(())
    }
}

impl RequestCounter {
    fn take(&self) -> (usize, Vec<String>) {
        let total = self.total.swap(0, Ordering::SeqCst);
        let mut ops = std::mem::take(&mut *self.operations.lock().unwrap());
        ops.sort();
        (total, ops)
    }
}

/// Items counted by a real scan (Select COUNT), so the size is measured, not assumed.
async fn table_size(client: &aws_sdk_dynamodb::Client, table: &str) -> i64 {
    let mut start = None;
    let mut count = 0;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .unwrap();
        count += i64::from(out.count);
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return count,
        }
    }
}

/// Adds filler items `from..to`: the smallest items that still load the table and the
/// `by_subject` index (other subjects of other tenants), 25 per BatchWriteItem, 16
/// batches in flight.
async fn seed_filler(client: &aws_sdk_dynamodb::Client, table: &str, from: usize, to: usize) {
    let batches: Vec<Vec<WriteRequest>> = (from..to)
        .map(|i| {
            let item = [
                ("pk", format!("T#f{}", i % 97)),
                ("sk", format!("F#{i}")),
                ("subject_pk", format!("T#f{}#S#ps_{}", i % 97, i % 5000)),
                ("subject_sk", format!("f#{i}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), AttributeValue::S(v)))
            .collect();
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build()
        })
        .collect::<Vec<_>>()
        .chunks(25)
        .map(<[WriteRequest]>::to_vec)
        .collect();
    futures_util::stream::iter(batches)
        .map(|batch| async move {
            let mut pending = batch;
            while !pending.is_empty() {
                let out = client
                    .batch_write_item()
                    .request_items(table, pending)
                    .send()
                    .await
                    .unwrap();
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(table))
                    .unwrap_or_default();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// A subject with exactly 10 records: 8 imported files naming them (one row each)
/// and 2 consent records.
async fn seed_subject(deps: &Deps, person: &Person, tag: &str) {
    for n in 0..8 {
        let import = format!("01JH{tag}{n:021}");
        let csv = format!(
            "name,email\n{},{}\nOther Person,other{n}@example.com\n",
            person.name, person.email
        );
        put_import_object(deps, &import, "upload.csv", &csv, &[(person, "email")]).await;
    }
    for purpose in ["marketing_email", "analytics"] {
        put_consent(deps, person, purpose, "granted").await;
    }
}

async fn process_counted(
    env: &Env,
    counter: &RequestCounter,
    person: &Person,
) -> (usize, Vec<String>) {
    let id = file_request(&env.deps, "export", person, "gdpr").await;
    counter.take();
    let progress = dsar::process::process_request(&env.deps, &acme(), &id, Budget::Unlimited)
        .await
        .unwrap();
    assert_eq!(
        progress,
        Progress::Finished(custody::privacy::Status::Complete)
    );
    counter.take()
}

#[tokio::test]
async fn dynamodb_requests_do_not_grow_with_the_table() {
    let stack = TestStack::new().await;
    let counter = RequestCounter::default();
    let mut clients = stack.clients.clone();
    clients.dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&stack.sdk)
            .interceptor(counter.clone())
            .build(),
    );
    let plain = stack.clients.dynamodb.clone();
    let table = stack.config.table.clone();
    let env = env_with(stack, Some(clients)).await;

    // Subjects A and B have the same shape: 10 records each (+ their request's ref).
    seed_subject(&env.deps, &ANN, "A").await;
    seed_subject(&env.deps, &BOB, "B").await;
    let own = table_size(&plain, &table).await as usize;
    seed_filler(&plain, &table, 0, 1_000 - own).await;
    assert_eq!(table_size(&plain, &table).await, 1_000);
    let (small, small_ops) = process_counted(&env, &counter, &ANN).await;

    let started = Instant::now();
    seed_filler(&plain, &table, 1_000, 100_000).await;
    let seeding = started.elapsed();
    let size = table_size(&plain, &table).await;
    assert!(size >= 100_000, "table holds {size} items");
    eprintln!("seeded 99 000 items in {seeding:?}; table now {size} items");
    let (large, large_ops) = process_counted(&env, &counter, &BOB).await;

    eprintln!(
        "DynamoDB requests for a 10-record subject: {small} at 1 000 items, {large} at {size}: {large_ops:?}"
    );
    assert_eq!(small, large, "1k: {small_ops:?}\n100k: {large_ops:?}");
    assert_eq!(small_ops, large_ops);
    assert!(!large_ops.iter().any(|op| op == "Scan"), "{large_ops:?}");
}
