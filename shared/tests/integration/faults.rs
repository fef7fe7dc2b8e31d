//! The test-only fault injector (`custody::faults`) against the emulator: faults reach
//! the SDK as the services' own errors, short bursts are absorbed by the SDK's retry,
//! long ones exhaust it.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;
use custody::aws::Clients;
use custody::faults::FaultPlan;
use custody_local::harness::TestStack;

const INJECTED: [&str; 9] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "SlowDown",
    "InternalServerError",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "GatewayTimeout",
    // A 504 without a modelled code surfaces as the SDK's unhandled error.
    "",
];

fn injected(code: Option<&str>) -> bool {
    INJECTED.contains(&code.unwrap_or(""))
}

#[tokio::test]
async fn every_call_faulted_exhausts_the_retry_of_each_service() {
    let stack = TestStack::new().await;
    let plan = FaultPlan::new(1, 1000);
    let clients = Clients::with_faults(&stack.sdk, Some(plan.clone()));

    let err = clients
        .dynamodb
        .describe_table()
        .table_name(&stack.config.table)
        .send()
        .await
        .expect_err("dynamodb must fail");
    assert!(injected(err.code()), "dynamodb: {err:?}");
    let err = clients
        .kms
        .list_keys()
        .send()
        .await
        .expect_err("kms must fail");
    assert!(injected(err.code()), "kms: {err:?}");
    let err = clients
        .s3
        .list_buckets()
        .send()
        .await
        .expect_err("s3 must fail");
    assert!(injected(err.code()), "s3: {err:?}");
    let err = clients
        .secrets
        .list_secrets()
        .send()
        .await
        .expect_err("secrets must fail");
    assert!(injected(err.code()), "secretsmanager: {err:?}");
    // Three attempts each (the SDK's default), every one answered by the injector.
    assert_eq!(plan.calls(), 12);
    assert_eq!(plan.injected(), 12);
}

#[tokio::test]
async fn a_short_burst_is_absorbed_and_the_write_happened_once() {
    let stack = TestStack::new().await;
    // The first seed whose first call is faulted and the retry is not.
    let seed = (0..10_000u64)
        .find(|&seed| {
            let plan = FaultPlan::new(seed, 200);
            plan.fault_at(0).is_some() && plan.fault_at(1).is_none()
        })
        .expect("some seed");
    let plan = FaultPlan::new(seed, 200);
    let clients = Clients::with_faults(&stack.sdk, Some(plan.clone()));
    clients
        .dynamodb
        .put_item()
        .table_name(&stack.config.table)
        .item("pk", AttributeValue::S("faults#test".into()))
        .item("sk", AttributeValue::S("item".into()))
        .send()
        .await
        .expect("the retry succeeds");
    assert_eq!(plan.injected(), 1);
    // The faulted answer replaced one the table had already applied: the retry wrote
    // the same item again, which a put makes harmless.
    let count = stack
        .clients
        .dynamodb
        .query()
        .table_name(&stack.config.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S("faults#test".into()))
        .send()
        .await
        .expect("query")
        .count;
    assert_eq!(count, 1);
}
