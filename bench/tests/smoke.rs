//! The harness still works, at a tiny size. Benchmarks are not tests: nothing here
//! asserts a timing, only that a measurement came out.

use std::time::Duration;

use custody_bench::build::{BASELINE_BINARY, BASELINE_PACKAGE, Profile, host_binaries};
use custody_bench::cold_start::{self, Kind, Subject};
use custody_bench::discover::discover;
use custody_bench::repo_root;
use custody_bench::request_count::{RequestCounter, counted_dynamodb};

#[tokio::test]
async fn cold_start_of_the_bare_runtime_gives_a_number() {
    let workspace = discover(&repo_root()).unwrap();
    let program = host_binaries(
        &workspace,
        &[(BASELINE_PACKAGE.into(), BASELINE_BINARY.into())],
        Profile::Dev,
    )
    .unwrap()
    .remove(0);
    let subject = Subject {
        name: BASELINE_BINARY.into(),
        kind: Kind::RustBaseline,
        program,
        env: Vec::new(),
    };
    let measured = cold_start::measure(&[subject], 2, Duration::from_secs(20)).await;
    let (summary, samples) = measured[0].as_ref().unwrap();
    assert_eq!(summary.runs, 2);
    assert_eq!(samples.len(), 2);
    assert!(summary.median_ms > 0.0);
}

#[tokio::test]
async fn the_request_counter_counts_every_dynamodb_request() {
    let stack = custody_local::harness::TestStack::new().await;
    let counter = RequestCounter::default();
    let dynamodb = counted_dynamodb(&stack.sdk, &counter);
    dynamodb.list_tables().send().await.unwrap();
    dynamodb
        .describe_table()
        .table_name(&stack.config.table)
        .send()
        .await
        .unwrap();
    assert_eq!(counter.count(), 2);
    counter.reset();
    assert_eq!(counter.count(), 0);
}
