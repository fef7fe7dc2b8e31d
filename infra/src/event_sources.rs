//! Local event sources: what AWS would deliver to the functions and moto does not.
//!
//! - DynamoDB stream → functions: reads the table's stream with `GetRecords` and
//!   invokes each function the template subscribes to it, applying the template's
//!   `FilterCriteria` patterns (Lambda event-filtering syntax) and `BatchSize`.
//! - S3 notifications → functions: polls the bucket's object versions and invokes the
//!   functions whose template `S3` events match (event type and key prefix/suffix).
//!
//! Delivery is at least once, like AWS: a failed invocation is retried. What still
//! fails goes where the template says, in the shape AWS sends:
//! - an asynchronous invocation (S3, Scheduler, `Event` invokes), after the function's
//!   `EventInvokeConfig.MaximumRetryAttempts`, to its `OnFailure` queue as an
//!   invocation record (`requestContext`, `requestPayload`, `responseContext`,
//!   `responsePayload`);
//! - a stream batch, invoked synchronously, retried from the first failed record
//!   (`ReportBatchItemFailures`) or bisected on a function error
//!   (`BisectBatchOnFunctionError`) up to the event's `MaximumRetryAttempts` or
//!   `MaximumRecordAgeInSeconds`, then to its `OnFailure` queue as batch metadata
//!   (`DDBStreamBatchInfo`: shard and sequence numbers, not the records).
//!
//! Deliberate differences: retries are milliseconds apart, not Lambda's backoff;
//! a stream's batches are not held in shard order while one is retried.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{AttributeValue as StreamValue, ShardIteratorType};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value as Json, json};
use serde_yaml::Value;

use crate::provision::Provisioned;
use crate::runtime_api::LocalFunction;

/// A function's subscription to the table stream.
#[derive(Debug, Clone)]
pub struct StreamSubscription {
    pub function: String,
    pub table_logical_id: String,
    pub patterns: Vec<Json>,
    pub batch_size: usize,
    /// `MaximumRetryAttempts`; `None` (AWS's -1) retries until the record is too old.
    pub max_retries: Option<u32>,
    /// `MaximumRecordAgeInSeconds`; `None` is the stream's own 24 hours.
    pub max_record_age: Option<Duration>,
    pub bisect: bool,
    pub report_item_failures: bool,
    /// Logical id of the `OnFailure` queue.
    pub on_failure: Option<String>,
}

/// A function's `EventInvokeConfig`: what Lambda does with asynchronous invocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncConfig {
    pub max_retries: u32,
    /// Logical id of the `OnFailure` queue.
    pub on_failure: Option<String>,
}

impl Default for AsyncConfig {
    /// Lambda's defaults: two retries, no destination.
    fn default() -> Self {
        AsyncConfig {
            max_retries: 2,
            on_failure: None,
        }
    }
}

/// `OnFailure.Destination: !GetAtt <queue>.Arn` → `<queue>`.
fn on_failure_target(config: &Value) -> Option<String> {
    config
        .get("DestinationConfig")
        .and_then(|d| d.get("OnFailure"))
        .and_then(|o| o.get("Destination"))
        .and_then(tag_target)
}

/// Every function's asynchronous-invocation config, by binary.
pub fn async_configs(template: &Value) -> HashMap<String, AsyncConfig> {
    template
        .get("Resources")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some("AWS::Serverless::Function"))
        .map(|(logical, r)| {
            let config = &r["Properties"]["EventInvokeConfig"];
            let defaults = AsyncConfig::default();
            (
                binary_name(logical.as_str().unwrap_or_default(), r),
                AsyncConfig {
                    max_retries: config
                        .get("MaximumRetryAttempts")
                        .and_then(Value::as_u64)
                        .map_or(defaults.max_retries, |n| n as u32),
                    on_failure: on_failure_target(config),
                },
            )
        })
        .collect()
}

/// Where failed events go: the provisioned queues, and who sends to them.
#[derive(Clone)]
pub struct Failures {
    sqs: aws_sdk_sqs::Client,
    configs: HashMap<String, AsyncConfig>,
    /// Queue logical id → URL.
    queues: HashMap<String, String>,
}

impl Failures {
    pub fn new(sdk: &aws_config::SdkConfig, template: &Value, provisioned: &Provisioned) -> Self {
        Failures {
            sqs: aws_sdk_sqs::Client::new(sdk),
            configs: async_configs(template),
            queues: provisioned
                .resources
                .iter()
                .filter(|(_, p)| p.kind == "AWS::SQS::Queue")
                .map(|(logical, p)| (logical.clone(), p.id.clone()))
                .collect(),
        }
    }

    pub fn async_config(&self, function: &str) -> AsyncConfig {
        self.configs.get(function).cloned().unwrap_or_default()
    }

    /// Sends `record` to the queue `logical`; an error says why it could not.
    async fn send(&self, logical: &str, record: &Json) -> Result<(), String> {
        let url = self
            .queues
            .get(logical)
            .ok_or_else(|| format!("queue {logical} was not provisioned"))?;
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(record.to_string())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| custody::aws::error_text(&e))
    }
}

/// The ARN Lambda names a local function by in its records.
pub fn function_arn(function: &str) -> String {
    format!(
        "arn:aws:lambda:{}:{}:function:{function}",
        crate::REGION,
        crate::ACCOUNT_ID
    )
}

/// A function's subscription to a bucket's notifications.
#[derive(Debug, Clone)]
pub struct BucketSubscription {
    pub function: String,
    pub bucket_logical_id: String,
    pub events: Vec<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
}

fn binary_name(logical: &str, resource: &Value) -> String {
    resource
        .get("Metadata")
        .and_then(|m| m.get("BuildProperties"))
        .and_then(|b| b.get("Binary"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| logical.to_owned())
}

fn tag_target(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(tagged) => tagged
            .value
            .as_str()
            .map(|s| s.split('.').next().unwrap_or(s).to_owned()),
        _ => None,
    }
}

/// The stream and bucket subscriptions the template declares.
pub fn subscriptions(template: &Value) -> (Vec<StreamSubscription>, Vec<BucketSubscription>) {
    let mut streams = Vec::new();
    let mut buckets = Vec::new();
    let Some(resources) = template.get("Resources").and_then(Value::as_mapping) else {
        return (streams, buckets);
    };
    for (logical, resource) in resources {
        if resource.get("Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
            continue;
        }
        let function = binary_name(logical.as_str().unwrap_or_default(), resource);
        let Some(events) = resource
            .get("Properties")
            .and_then(|p| p.get("Events"))
            .and_then(Value::as_mapping)
        else {
            continue;
        };
        for event in events.values() {
            let props = &event["Properties"];
            match event.get("Type").and_then(Value::as_str) {
                Some("DynamoDB") => {
                    let Some(table) = props.get("Stream").and_then(tag_target) else {
                        continue;
                    };
                    let patterns = props
                        .get("FilterCriteria")
                        .and_then(|f| f.get("Filters"))
                        .and_then(Value::as_sequence)
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.get("Pattern").and_then(Value::as_str))
                        .filter_map(|p| serde_json::from_str(p).ok())
                        .collect();
                    let response_types = format!("{:?}", props.get("FunctionResponseTypes"));
                    streams.push(StreamSubscription {
                        function: function.clone(),
                        table_logical_id: table,
                        patterns,
                        batch_size: props
                            .get("BatchSize")
                            .and_then(Value::as_u64)
                            .unwrap_or(100) as usize,
                        max_retries: props
                            .get("MaximumRetryAttempts")
                            .and_then(Value::as_i64)
                            .and_then(|n| u32::try_from(n).ok()),
                        max_record_age: props
                            .get("MaximumRecordAgeInSeconds")
                            .and_then(Value::as_i64)
                            .and_then(|n| u64::try_from(n).ok())
                            .map(Duration::from_secs),
                        bisect: props
                            .get("BisectBatchOnFunctionError")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        report_item_failures: response_types.contains("ReportBatchItemFailures"),
                        on_failure: on_failure_target(props),
                    });
                }
                Some("S3") => {
                    let Some(bucket) = props.get("Bucket").and_then(tag_target) else {
                        continue;
                    };
                    let events = match props.get("Events") {
                        Some(Value::String(e)) => vec![e.clone()],
                        Some(Value::Sequence(list)) => list
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect(),
                        _ => Vec::new(),
                    };
                    let mut prefix = None;
                    let mut suffix = None;
                    for rule in props
                        .get("Filter")
                        .and_then(|f| f.get("S3Key"))
                        .and_then(|k| k.get("Rules"))
                        .and_then(Value::as_sequence)
                        .into_iter()
                        .flatten()
                    {
                        let value = rule.get("Value").and_then(Value::as_str).map(str::to_owned);
                        match rule
                            .get("Name")
                            .and_then(Value::as_str)
                            .map(str::to_ascii_lowercase)
                            .as_deref()
                        {
                            Some("prefix") => prefix = value,
                            Some("suffix") => suffix = value,
                            _ => {}
                        }
                    }
                    buckets.push(BucketSubscription {
                        function: function.clone(),
                        bucket_logical_id: bucket,
                        events,
                        prefix,
                        suffix,
                    });
                }
                _ => {}
            }
        }
    }
    (streams, buckets)
}

/// Lambda event filtering: does `record` match `pattern`? Supports literal value
/// lists, `prefix`, `suffix`, `exists`, `anything-but` and `numeric` (=, <, >, …).
pub fn matches(pattern: &Json, record: &Json) -> bool {
    let Some(fields) = pattern.as_object() else {
        return false;
    };
    fields.iter().all(|(name, rule)| {
        let value = record.get(name);
        match rule {
            Json::Object(_) => value.is_some_and(|v| matches(rule, v)),
            Json::Array(options) => options.iter().any(|option| matches_option(option, value)),
            _ => false,
        }
    })
}

fn matches_option(option: &Json, value: Option<&Json>) -> bool {
    match option {
        Json::Object(op) => {
            if let Some(exists) = op.get("exists").and_then(Json::as_bool) {
                return value.is_some() == exists;
            }
            let Some(value) = value else {
                return false;
            };
            if let Some(prefix) = op.get("prefix").and_then(Json::as_str) {
                return value.as_str().is_some_and(|v| v.starts_with(prefix));
            }
            if let Some(suffix) = op.get("suffix").and_then(Json::as_str) {
                return value.as_str().is_some_and(|v| v.ends_with(suffix));
            }
            if let Some(excluded) = op.get("anything-but") {
                let excluded: Vec<&Json> = match excluded {
                    Json::Array(list) => list.iter().collect(),
                    single => vec![single],
                };
                return !excluded.contains(&value);
            }
            if let Some(Json::Array(terms)) = op.get("numeric") {
                let Some(number) = value
                    .as_f64()
                    .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                else {
                    return false;
                };
                return terms.chunks(2).all(|pair| {
                    match (
                        pair.first().and_then(Json::as_str),
                        pair.get(1).and_then(Json::as_f64),
                    ) {
                        (Some("="), Some(x)) => number == x,
                        (Some("<"), Some(x)) => number < x,
                        (Some("<="), Some(x)) => number <= x,
                        (Some(">"), Some(x)) => number > x,
                        (Some(">="), Some(x)) => number >= x,
                        _ => false,
                    }
                });
            }
            false
        }
        literal => value == Some(literal),
    }
}

/// A stream attribute value in the JSON shape Lambda delivers (`{"S": "…"}`).
pub fn attribute_json(value: &StreamValue) -> Json {
    match value {
        StreamValue::S(s) => json!({"S": s}),
        StreamValue::N(n) => json!({"N": n}),
        StreamValue::B(b) => json!({"B": STANDARD.encode(b.as_ref())}),
        StreamValue::Bool(b) => json!({"BOOL": b}),
        StreamValue::Null(n) => json!({"NULL": n}),
        StreamValue::Ss(list) => json!({"SS": list}),
        StreamValue::Ns(list) => json!({"NS": list}),
        StreamValue::Bs(list) => {
            json!({"BS": list.iter().map(|b| STANDARD.encode(b.as_ref())).collect::<Vec<_>>()})
        }
        StreamValue::L(list) => json!({"L": list.iter().map(attribute_json).collect::<Vec<_>>()}),
        StreamValue::M(map) => json!({"M": image_json(map)}),
        _ => Json::Null,
    }
}

fn image_json(map: &HashMap<String, StreamValue>) -> Json {
    Json::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), attribute_json(v)))
            .collect(),
    )
}

/// A stream record as Lambda delivers it (also what redrive rebuilds a failed batch from).
pub fn record_json(record: &aws_sdk_dynamodbstreams::types::Record, stream_arn: &str) -> Json {
    let mut out = json!({
        "eventID": record.event_id(),
        "eventName": record.event_name().map(|e| e.as_str()),
        "eventVersion": record.event_version(),
        "eventSource": "aws:dynamodb",
        "awsRegion": crate::REGION,
        "eventSourceARN": stream_arn,
    });
    if let Some(data) = record.dynamodb() {
        let mut dynamodb = json!({
            "SequenceNumber": data.sequence_number(),
            "SizeBytes": data.size_bytes(),
            "StreamViewType": data.stream_view_type().map(|s| s.as_str()),
        });
        if let Some(at) = data.approximate_creation_date_time() {
            dynamodb["ApproximateCreationDateTime"] = json!(at.secs());
        }
        if let Some(keys) = data.keys() {
            dynamodb["Keys"] = image_json(keys);
        }
        if let Some(image) = data.new_image() {
            dynamodb["NewImage"] = image_json(image);
        }
        if let Some(image) = data.old_image() {
            dynamodb["OldImage"] = image_json(image);
        }
        out["dynamodb"] = dynamodb;
    }
    if let Some(identity) = record.user_identity() {
        out["userIdentity"] =
            json!({"type": identity.r#type(), "principalId": identity.principal_id()});
    }
    out
}

/// An asynchronous invocation as Lambda makes it: the first attempt and the
/// function's configured retries; then the invocation record goes to its on-failure
/// queue (or, with none, is logged as dropped). Returns the attempt that succeeded,
/// or the last error.
pub async fn invoke_async(
    function: &LocalFunction,
    event: &Json,
    failures: &Failures,
) -> Result<u32, String> {
    let config = failures.async_config(function.name());
    let attempts = config.max_retries + 1;
    let mut last = None;
    for attempt in 1..=attempts {
        match function.invoke(event).await {
            Ok(_) => return Ok(attempt),
            Err(err) => {
                tracing::warn!(function = function.name(), attempt, error = %err, "event delivery failed");
                last = Some(err);
                if attempt < attempts {
                    tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
                }
            }
        }
    }
    let (error_type, message) = match &last {
        Some(crate::runtime_api::InvokeError::Function {
            error_type,
            message,
            ..
        }) => (error_type.clone(), message.clone()),
        Some(other) => ("Runtime.ExitError".to_owned(), other.to_string()),
        None => ("Runtime.Unknown".to_owned(), String::new()),
    };
    let record = json!({
        "version": "1.0",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "requestContext": {
            "requestId": ulid::Ulid::new().to_string().to_lowercase(),
            "functionArn": format!("{}:$LATEST", function_arn(function.name())),
            "condition": "RetriesExhausted",
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "responsePayload": {"errorType": error_type, "errorMessage": message},
    });
    deliver_failure(
        function.name(),
        config.on_failure.as_deref(),
        &record,
        failures,
    )
    .await;
    Err(message)
}

async fn deliver_failure(function: &str, queue: Option<&str>, record: &Json, failures: &Failures) {
    match queue {
        Some(queue) => match failures.send(queue, record).await {
            Ok(()) => {
                tracing::warn!(
                    function,
                    queue,
                    "failed event sent to the on-failure destination"
                )
            }
            Err(error) => {
                tracing::error!(function, queue, %error, %record, "failed event could not be sent to its on-failure destination")
            }
        },
        None => {
            tracing::error!(function, %record, "failed event dropped: no on-failure destination")
        }
    }
}

/// A stream batch as Lambda's event source mapping delivers it: synchronously,
/// retried, bisected, then reported to the on-failure queue.
pub async fn deliver_stream_batch(
    function: &LocalFunction,
    subscription: &StreamSubscription,
    shard_id: &str,
    stream_arn: &str,
    batch: Vec<Json>,
    failures: &Failures,
) {
    let sequence = |r: &Json| r["dynamodb"]["SequenceNumber"].as_str().map(str::to_owned);
    let created = |r: &Json| r["dynamodb"]["ApproximateCreationDateTime"].as_i64();
    // (records, retries spent on them)
    let mut pending = std::collections::VecDeque::from([(batch, 0u32)]);
    let mut invocations = 0u32;
    while let Some((records, retries)) = pending.pop_front() {
        if records.is_empty() {
            continue;
        }
        invocations += 1;
        let failed: Option<(Vec<Json>, bool)> =
            match function.invoke(&json!({"Records": records})).await {
                Ok(response) if subscription.report_item_failures => {
                    let reported: Vec<String> = response["batchItemFailures"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                        .collect();
                    if reported.is_empty() {
                        None
                    } else {
                        // Lambda retries from the lowest failed sequence number; an
                        // identifier not in the batch fails the whole batch.
                        let first = records
                            .iter()
                            .position(|r| sequence(r).is_some_and(|s| reported.contains(&s)))
                            .unwrap_or(0);
                        Some((records[first..].to_vec(), false))
                    }
                }
                Ok(_) => None,
                Err(err) => {
                    tracing::warn!(function = function.name(), error = %err, "stream batch failed");
                    Some((records, true))
                }
            };
        let Some((failed, function_error)) = failed else {
            continue;
        };
        let too_old = subscription.max_record_age.is_some_and(|age| {
            failed
                .first()
                .and_then(created)
                .is_some_and(|at| chrono::Utc::now().timestamp() - at > age.as_secs() as i64)
        });
        let exhausted = subscription.max_retries.is_some_and(|max| retries >= max);
        if too_old || exhausted {
            let info = json!({
                "shardId": shard_id,
                "startSequenceNumber": failed.first().and_then(sequence),
                "endSequenceNumber": failed.last().and_then(sequence),
                "approximateArrivalOfFirstRecord": failed.first().and_then(created).and_then(|t| chrono::DateTime::from_timestamp(t, 0)).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                "approximateArrivalOfLastRecord": failed.last().and_then(created).and_then(|t| chrono::DateTime::from_timestamp(t, 0)).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                "batchSize": failed.len(),
                "streamArn": stream_arn,
            });
            let mut response = json!({"statusCode": 200, "executedVersion": "$LATEST"});
            if function_error {
                response["functionError"] = json!("Unhandled");
            }
            let record = json!({
                "requestContext": {
                    "requestId": ulid::Ulid::new().to_string().to_lowercase(),
                    "functionArn": function_arn(function.name()),
                    "condition": if too_old { "RecordAgeExceeded" } else { "RetryAttemptsExhausted" },
                    "approximateInvokeCount": invocations,
                },
                "responseContext": response,
                "version": "1.0",
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "DDBStreamBatchInfo": info,
            });
            deliver_failure(
                function.name(),
                subscription.on_failure.as_deref(),
                &record,
                failures,
            )
            .await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if function_error && subscription.bisect && failed.len() > 1 {
            let (left, right) = failed.split_at(failed.len() / 2);
            pending.push_front((right.to_vec(), retries + 1));
            pending.push_front((left.to_vec(), retries + 1));
        } else {
            pending.push_front((failed, retries + 1));
        }
    }
}

/// Runs the stream and bucket pumps until the task is dropped.
pub async fn run(
    sdk: aws_config::SdkConfig,
    provisioned: Provisioned,
    template: Value,
    functions: HashMap<String, Arc<LocalFunction>>,
    failures: Failures,
    poll: Duration,
) {
    let (streams, buckets) = subscriptions(&template);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let streams_client = aws_sdk_dynamodbstreams::Client::new(&sdk);
    let s3 = custody::aws::s3_client(&sdk);

    // Stream shard iterators start at the current end: only changes from now on.
    // table → (stream ARN, shard id, shard iterator)
    let mut iterators: HashMap<String, (String, String, Option<String>)> = HashMap::new();
    for table in streams
        .iter()
        .map(|s| s.table_logical_id.clone())
        .collect::<HashSet<_>>()
    {
        let Some(physical) = provisioned.resources.get(&table) else {
            continue;
        };
        let Ok(out) = ddb.describe_table().table_name(&physical.id).send().await else {
            continue;
        };
        let Some(stream_arn) = out.table.and_then(|t| t.latest_stream_arn) else {
            continue;
        };
        iterators.insert(table, (stream_arn, String::new(), None));
    }
    let mut seen_versions: HashMap<String, HashSet<String>> = HashMap::new();
    let mut first_bucket_poll = true;
    loop {
        for (table, (stream_arn, shard_id, shard_iterators)) in iterators.iter_mut() {
            if shard_iterators.is_none() {
                if let Ok(desc) = streams_client
                    .describe_stream()
                    .stream_arn(stream_arn.as_str())
                    .send()
                    .await
                {
                    let shards = desc
                        .stream_description()
                        .map(|d| d.shards().to_vec())
                        .unwrap_or_default();
                    if let Some(shard) = shards.last()
                        && let Ok(it) = streams_client
                            .get_shard_iterator()
                            .stream_arn(stream_arn.as_str())
                            .shard_id(shard.shard_id().unwrap_or_default())
                            .shard_iterator_type(ShardIteratorType::Latest)
                            .send()
                            .await
                    {
                        *shard_id = shard.shard_id().unwrap_or_default().to_owned();
                        *shard_iterators = it.shard_iterator;
                    }
                }
                continue;
            }
            let Some(iterator) = shard_iterators.clone() else {
                continue;
            };
            let Ok(out) = streams_client
                .get_records()
                .shard_iterator(iterator)
                .send()
                .await
            else {
                continue;
            };
            *shard_iterators = out.next_shard_iterator.clone();
            let records: Vec<Json> = out
                .records()
                .iter()
                .map(|r| record_json(r, stream_arn))
                .collect();
            if records.is_empty() {
                continue;
            }
            for subscription in streams.iter().filter(|s| &s.table_logical_id == table) {
                let Some(function) = functions.get(&subscription.function) else {
                    continue;
                };
                let selected: Vec<Json> = records
                    .iter()
                    .filter(|r| {
                        subscription.patterns.is_empty()
                            || subscription.patterns.iter().any(|p| matches(p, r))
                    })
                    .cloned()
                    .collect();
                for batch in selected.chunks(subscription.batch_size.max(1)) {
                    deliver_stream_batch(
                        function,
                        subscription,
                        shard_id,
                        stream_arn,
                        batch.to_vec(),
                        &failures,
                    )
                    .await;
                }
            }
        }

        for subscription in &buckets {
            let Some(bucket) = provisioned
                .resources
                .get(&subscription.bucket_logical_id)
                .map(|p| p.id.clone())
            else {
                continue;
            };
            let Ok(out) = s3
                .list_object_versions()
                .bucket(&bucket)
                .set_prefix(subscription.prefix.clone())
                .send()
                .await
            else {
                continue;
            };
            let seen = seen_versions
                .entry(format!("{}:{bucket}", subscription.function))
                .or_default();
            for version in out.versions() {
                let key = version.key().unwrap_or_default().to_owned();
                let id = format!("{key}@{}", version.version_id().unwrap_or("null"));
                if !seen.insert(id) || first_bucket_poll {
                    continue;
                }
                if subscription
                    .suffix
                    .as_deref()
                    .is_some_and(|s| !key.ends_with(s))
                {
                    continue;
                }
                if !subscription
                    .events
                    .iter()
                    .any(|e| e.starts_with("s3:ObjectCreated"))
                {
                    continue;
                }
                let Some(function) = functions.get(&subscription.function) else {
                    continue;
                };
                let event = json!({"Records": [{
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": crate::REGION,
                    "eventTime": chrono::Utc::now().to_rfc3339(),
                    "eventName": "ObjectCreated:Put",
                    "userIdentity": {"principalId": "local"},
                    "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                    "responseElements": {"x-amz-request-id": "local", "x-amz-id-2": "local"},
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "configurationId": "local",
                        "bucket": {"name": bucket, "ownerIdentity": {"principalId": "local"}, "arn": format!("arn:aws:s3:::{bucket}")},
                        "object": {
                            "key": url::form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>().replace("%2F", "/"),
                            "size": version.size().unwrap_or(0),
                            "eTag": version.e_tag().unwrap_or_default().trim_matches('"'),
                            "versionId": version.version_id(),
                            "sequencer": "0"
                        }
                    }
                }]});
                let _ = invoke_async(function, &event, &failures).await;
            }
        }
        first_bucket_poll = false;
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_patterns() {
        let record = json!({
            "eventName": "REMOVE",
            "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
            "dynamodb": {"OldImage": {"kind": {"S": "import"}, "status": {"S": "approved"}}}
        });
        assert!(matches(&json!({"eventName": ["REMOVE"]}), &record));
        assert!(matches(
            &json!({"userIdentity": {"type": ["Service"], "principalId": ["dynamodb.amazonaws.com"]}}),
            &record
        ));
        assert!(!matches(
            &json!({"eventName": ["INSERT", "MODIFY"]}),
            &record
        ));
        assert!(matches(
            &json!({"dynamodb": {"OldImage": {"kind": {"S": [{"prefix": "imp"}]}}}}),
            &record
        ));
        assert!(matches(
            &json!({"dynamodb": {"NewImage": [{"exists": false}]}}),
            &record
        ));
        assert!(!matches(
            &json!({"dynamodb": {"OldImage": {"status": {"S": [{"anything-but": ["approved"]}]}}}}),
            &record
        ));
    }
}
