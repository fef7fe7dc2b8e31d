//! Nothing lost silently: an event a function fails on every time ends, after the
//! retries the template configures, in the function's failure queue, in the shape
//! AWS sends and with what is needed to replay it.
//!
//! The faults are poisoned items: an import item and a privacy request the function
//! cannot read, so every attempt fails the way a broken dependency would.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use aws_sdk_sqs::types::QueueAttributeName;
use custody::retention::RetentionClass;
use custody_local::event_sources::{async_configs, subscriptions};
use custody_local::stack::{LocalStack, StackOptions};
use serde_json::Value;

async fn stack() -> LocalStack {
    custody_local::harness::build_binaries();
    LocalStack::start(StackOptions::new(custody_local::harness::unique_stage()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn queue_url(stack: &LocalStack, logical: &str) -> String {
    stack.provisioned.resources[logical].id.clone()
}

/// The next message of the queue (waiting up to `limit`), deleted.
async fn next_message(stack: &LocalStack, logical: &str, limit: Duration) -> Value {
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    let url = queue_url(stack, logical);
    let until = Instant::now() + limit;
    loop {
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(1)
            .send()
            .await
            .unwrap();
        if let Some(message) = out.messages().first() {
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
            return serde_json::from_str(message.body().unwrap()).unwrap();
        }
        assert!(
            Instant::now() < until,
            "nothing in {logical} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn put_item(stack: &LocalStack, fields: &[(&str, &str)]) {
    let mut put = stack
        .clients
        .dynamodb
        .put_item()
        .table_name(&stack.provisioned.config.table);
    for (name, value) in fields {
        put = put.item(*name, AttributeValue::S((*value).to_owned()));
    }
    put.send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_queues_are_provisioned_as_the_template_states() {
    let stack = stack().await;
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    let data_key = &stack.provisioned.resources["DataKey"].arn;
    let queues: Vec<&String> = stack
        .provisioned
        .resources
        .iter()
        .filter(|(_, p)| p.kind == "AWS::SQS::Queue")
        .map(|(l, _)| l)
        .collect();
    // One per asynchronously invoked function: import, expiry, dsar, export, oauth.
    assert_eq!(queues.len(), 5, "{queues:?}");
    for logical in queues {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(queue_url(&stack, logical))
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        let days = RetentionClass::FailedEvent.days().unwrap();
        assert_eq!(
            attributes
                .get(&QueueAttributeName::MessageRetentionPeriod)
                .map(String::as_str),
            Some((days * 86_400).to_string().as_str()),
            "{logical}"
        );
        assert_eq!(
            attributes.get(&QueueAttributeName::KmsMasterKeyId),
            Some(data_key),
            "{logical}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_upload_ends_in_the_import_failure_queue_with_its_event() {
    let stack = stack().await;
    let retries = async_configs(&stack.template)["import"].max_retries;
    let import = &stack.functions["import"];
    // The bucket pump's first look only records what exists: let it look first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = import.invocation_ids().len();

    // An import item the function cannot read, and its upload.
    let id = custody::imports::new_import_id();
    put_item(
        &stack,
        &[
            ("pk", "T#acme"),
            ("sk", &format!("IMP#{id}")),
            ("kind", "import"),
            ("status", "created"),
        ],
    )
    .await;
    let key = format!("imports/acme/{id}/upload.csv");
    stack
        .clients
        .s3
        .put_object()
        .bucket(&stack.provisioned.config.imports_bucket)
        .key(&key)
        .body(b"email\na@example.org\n".to_vec().into())
        .send()
        .await
        .unwrap();

    let record = next_message(&stack, "ImportFailureQueue", Duration::from_secs(60)).await;
    // The asynchronous invocation record, as Lambda's on-failure destination sends it.
    let context = &record["requestContext"];
    assert_eq!(context["condition"], "RetriesExhausted", "{record}");
    assert_eq!(context["approximateInvokeCount"], retries + 1, "{record}");
    assert!(
        context["functionArn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":function:import:$LATEST")),
        "{record}"
    );
    assert_eq!(record["version"], "1.0");
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert!(
        record["responsePayload"]["errorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{record}"
    );
    // The payload to replay: the S3 event itself.
    let s3 = &record["requestPayload"]["Records"][0]["s3"];
    assert_eq!(s3["object"]["key"], key.as_str(), "{record}");
    assert_eq!(
        s3["bucket"]["name"],
        stack.provisioned.config.imports_bucket.as_str()
    );
    assert_eq!(
        import.invocation_ids().len() - before,
        retries as usize + 1,
        "the first attempt and the configured retries, no more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_privacy_request_ends_in_the_dsar_failure_queue_and_can_be_read_back() {
    let stack = stack().await;
    let subscription = subscriptions(&stack.template)
        .0
        .into_iter()
        .find(|s| s.function == "dsar")
        .expect("dsar's stream subscription");
    let retries = subscription.max_retries.expect("bounded retries");
    let dsar = &stack.functions["dsar"];
    // The stream pump starts at the stream's end once it has looked: let it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = dsar.invocation_ids().len();

    // A pending request the function cannot read: it fails on it every time.
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let sk = format!("DSAR#{id}");
    put_item(
        &stack,
        &[
            ("pk", "T#acme"),
            ("sk", &sk),
            ("kind", "privacy_request"),
            ("status", "pending"),
        ],
    )
    .await;

    let record = next_message(&stack, "DsarFailureQueue", Duration::from_secs(60)).await;
    // The stream on-failure record: metadata of the batch, not the records.
    let context = &record["requestContext"];
    assert_eq!(context["condition"], "RetryAttemptsExhausted", "{record}");
    assert_eq!(context["approximateInvokeCount"], retries + 1, "{record}");
    assert!(
        context["functionArn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":function:dsar")),
        "{record}"
    );
    assert!(record.get("requestPayload").is_none(), "{record}");
    let info = &record["DDBStreamBatchInfo"];
    assert_eq!(info["batchSize"], 1, "{record}");
    assert_eq!(info["startSequenceNumber"], info["endSequenceNumber"]);
    assert!(info["shardId"].as_str().is_some_and(|s| !s.is_empty()));
    let stream_arn = info["streamArn"].as_str().expect("streamArn").to_owned();
    assert_eq!(dsar.invocation_ids().len() - before, retries as usize + 1);

    // What a replay needs is still in the stream (24 h): the record at the sequence
    // number is the poisoned request.
    let streams = aws_sdk_dynamodbstreams::Client::new(&stack.sdk);
    let iterator = streams
        .get_shard_iterator()
        .stream_arn(&stream_arn)
        .shard_id(info["shardId"].as_str().unwrap())
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .sequence_number(info["startSequenceNumber"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .shard_iterator
        .unwrap();
    let records = streams
        .get_records()
        .shard_iterator(iterator)
        .send()
        .await
        .unwrap();
    let first = records
        .records()
        .first()
        .expect("the record is in the stream");
    let keys = first.dynamodb().and_then(|d| d.keys()).unwrap();
    assert_eq!(
        keys.get("sk"),
        Some(&aws_sdk_dynamodbstreams::types::AttributeValue::S(sk))
    );
}
