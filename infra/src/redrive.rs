//! Redrive: replays the events in a failure queue into their function, once the
//! cause is fixed (`custody-redrive`, README § Redrive failed events).
//!
//! Three kinds of record reach the queues (docs/ARCHITECTURE.md § Failure paths):
//! - **Lambda's on-failure record** of an asynchronous invocation (S3 → import and
//!   expiry, the dsar deadline check, the export's own retries): `requestPayload` is
//!   the event; it is replayed as it was.
//! - **A stream batch's on-failure record**: only `DDBStreamBatchInfo` (shard and
//!   sequence numbers). The records are read back from the table's stream, which keeps
//!   them 24 hours, and delivered in the shape Lambda's event source mapping uses.
//! - **EventBridge Scheduler's dead letter**: the body is the target's input, the
//!   target in the `TARGET_ARN` attribute.
//!
//! Anything else is reported and left in the queue. A message is deleted only after
//! its function answered without error (a synchronous `Invoke`), so a failed replay
//! stays for the next attempt. Replaying twice has one effect because every function
//! is idempotent for the events it receives (imports by object version, privacy
//! requests by their status, exports by their run lease); the tests deliver the same
//! record twice to prove it.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde_json::{Value as Json, json};

/// How long a received message stays invisible to others while this run holds it:
/// longer than the longest synchronous invocation (Lambda's 15 minutes).
pub const VISIBILITY_SECONDS: i32 = 960;
/// Most messages one run considers (a run reports how many it left).
pub const DEFAULT_LIMIT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("SQS: {0}")]
    Sqs(String),
    #[error("reading the stream back: {0}")]
    Stream(String),
}

/// The AWS clients redrive uses (the emulator's or the account's).
#[derive(Clone)]
pub struct Clients {
    pub sqs: aws_sdk_sqs::Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
    pub lambda: aws_sdk_lambda::Client,
}

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            sqs: aws_sdk_sqs::Client::new(sdk),
            streams: aws_sdk_dynamodbstreams::Client::new(sdk),
            lambda: aws_sdk_lambda::Client::new(sdk),
        }
    }
}

/// What one failure-queue message is, and how to replay it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Lambda's on-failure record of an asynchronous invocation.
    Async { function: String, event: Json },
    /// A stream batch's on-failure record.
    Stream {
        function: String,
        stream_arn: String,
        shard_id: String,
        start: String,
        end: String,
    },
    /// EventBridge Scheduler's dead letter.
    Schedule { function: String, event: Json },
    /// Nothing redrive knows how to replay; left in the queue.
    Unrecognised { why: String },
}

impl Record {
    /// Reads a message. `function` overrides the function named in the record.
    pub fn classify(
        body: &str,
        attributes: &HashMap<String, String>,
        function: Option<&str>,
    ) -> Record {
        let named = |arn: Option<&str>| -> Option<String> {
            function
                .map(str::to_owned)
                .or_else(|| arn.map(function_name))
                .filter(|f| !f.is_empty())
        };
        if let Some(target) = attributes.get("TARGET_ARN") {
            let Some(function) = named(Some(target)) else {
                return Record::Unrecognised {
                    why: "dead letter without a target".into(),
                };
            };
            let event = serde_json::from_str(body).unwrap_or(Json::String(body.to_owned()));
            return Record::Schedule { function, event };
        }
        let Ok(record) = serde_json::from_str::<Json>(body) else {
            return Record::Unrecognised {
                why: "not JSON".into(),
            };
        };
        let Some(function) = named(record["requestContext"]["functionArn"].as_str()) else {
            return Record::Unrecognised {
                why: "no requestContext.functionArn".into(),
            };
        };
        if let Some(info) = record.get("DDBStreamBatchInfo") {
            let text = |name: &str| info[name].as_str().map(str::to_owned);
            return match (
                text("streamArn"),
                text("shardId"),
                text("startSequenceNumber"),
                text("endSequenceNumber"),
            ) {
                (Some(stream_arn), Some(shard_id), Some(start), Some(end)) => Record::Stream {
                    function,
                    stream_arn,
                    shard_id,
                    start,
                    end,
                },
                _ => Record::Unrecognised {
                    why: "DDBStreamBatchInfo without stream, shard or sequence numbers".into(),
                },
            };
        }
        match record.get("requestPayload") {
            Some(event) => Record::Async {
                function,
                event: event.clone(),
            },
            None => Record::Unrecognised {
                why: "neither requestPayload nor DDBStreamBatchInfo".into(),
            },
        }
    }

    pub fn function(&self) -> Option<&str> {
        match self {
            Record::Async { function, .. }
            | Record::Stream { function, .. }
            | Record::Schedule { function, .. } => Some(function),
            Record::Unrecognised { .. } => None,
        }
    }

    /// One line for the operator: kind, function and what the event is about, by
    /// ids only (object keys hold tenant and import ids; no row data, no secrets).
    pub fn summary(&self) -> String {
        match self {
            Record::Async { function, event } | Record::Schedule { function, event } => {
                let kind = if matches!(self, Record::Async { .. }) {
                    "async"
                } else {
                    "schedule"
                };
                format!("{kind} → {function}: {}", event_summary(event))
            }
            Record::Stream {
                function,
                shard_id,
                start,
                end,
                ..
            } => format!("stream → {function}: shard {shard_id}, records {start}..{end}"),
            Record::Unrecognised { why } => format!("unrecognised: {why}"),
        }
    }
}

/// One resource of a CloudFormation stack (DescribeStackResources): logical id, type,
/// physical id. For `AWS::SQS::Queue` the physical id is the queue URL; for
/// `AWS::Lambda::Function` it is the function name.
#[derive(Debug, Clone, PartialEq)]
pub struct StackResource {
    pub logical_id: String,
    pub resource_type: String,
    pub physical_id: String,
}

/// Resolves `--queue`/`--function` given as the template's logical ids (e.g.
/// `ImportFailureQueue`, `ImportFunction`) against the stack's resources. A value that
/// is no logical id of the right type is returned as given (a URL, name or ARN).
pub fn resolve_in_stack(resources: &[StackResource], value: &str, resource_type: &str) -> String {
    resources
        .iter()
        .find(|r| r.logical_id == value && r.resource_type == resource_type)
        .map(|r| r.physical_id.clone())
        .unwrap_or_else(|| value.to_owned())
}

/// `arn:…:function:NAME[:QUALIFIER]` → `NAME`; a bare name stays as it is.
pub fn function_name(arn: &str) -> String {
    arn.split(":function:")
        .nth(1)
        .unwrap_or(arn)
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn event_summary(event: &Json) -> String {
    if let Some(records) = event["Records"].as_array() {
        let objects: Vec<String> = records
            .iter()
            .filter_map(|r| {
                Some(format!(
                    "{} s3://{}/{}",
                    r["eventName"].as_str()?,
                    r["s3"]["bucket"]["name"].as_str()?,
                    r["s3"]["object"]["key"].as_str()?
                ))
            })
            .collect();
        if !objects.is_empty() {
            return objects.join(", ");
        }
        return format!("{} records", records.len());
    }
    if let Some(tenant) = event["tenant_id"].as_str() {
        return format!("tenant {tenant}");
    }
    if let Some(kind) = event["detail-type"].as_str() {
        return kind.to_owned();
    }
    "event".into()
}

/// A message of the queue, as received.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub receipt: String,
    /// As received (what a test sends again to deliver a record twice).
    pub body: String,
    pub record: Record,
    /// How often SQS has handed it out (the previous redrives included).
    pub receive_count: u32,
}

/// What a run did (or, dry, would do).
#[derive(Debug, Default)]
pub struct Report {
    /// (message id, summary) of every replayable message seen.
    pub planned: Vec<(String, String)>,
    pub replayed: usize,
    /// (message id, why): replays that failed; the messages stay.
    pub failed: Vec<(String, String)>,
    /// (message id, why): messages left alone (unrecognised).
    pub skipped: Vec<(String, String)>,
}

impl Report {
    pub fn line(&self, dry_run: bool) -> String {
        if dry_run {
            format!(
                "redrive (dry run): {} to replay, {} unrecognised; nothing changed",
                self.planned.len(),
                self.skipped.len()
            )
        } else {
            format!(
                "redrive: {} replayed, {} failed, {} skipped",
                self.replayed,
                self.failed.len(),
                self.skipped.len()
            )
        }
    }
}

/// Receives every message of the queue (up to `limit`), holding each invisible for
/// [`VISIBILITY_SECONDS`] so a concurrent redrive does not take it too.
pub async fn receive(
    clients: &Clients,
    queue_url: &str,
    function: Option<&str>,
    limit: usize,
) -> Result<Vec<Message>, RedriveError> {
    let mut seen: BTreeMap<String, Message> = BTreeMap::new();
    let mut empty = 0;
    while seen.len() < limit && empty < 2 {
        let out = clients
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(VISIBILITY_SECONDS)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| RedriveError::Sqs(custody::aws::error_text(&e)))?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            // SQS may answer empty while messages exist (short sampling): ask twice.
            empty += 1;
            continue;
        }
        empty = 0;
        for message in messages {
            let (Some(id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else {
                continue;
            };
            let attributes: HashMap<String, String> = message
                .message_attributes()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            let receive_count = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            let record =
                Record::classify(message.body().unwrap_or_default(), &attributes, function);
            seen.insert(
                id.to_owned(),
                Message {
                    id: id.to_owned(),
                    receipt: receipt.to_owned(),
                    body: message.body().unwrap_or_default().to_owned(),
                    record,
                    receive_count,
                },
            );
        }
    }
    Ok(seen.into_values().collect())
}

/// Makes `message` visible again at once (left for later, or for another run).
pub async fn release(clients: &Clients, queue_url: &str, message: &Message) {
    let _ = clients
        .sqs
        .change_message_visibility()
        .queue_url(queue_url)
        .receipt_handle(&message.receipt)
        .visibility_timeout(0)
        .send()
        .await;
}

/// The event to deliver for `record`: the stored event, or the stream records read
/// back by sequence number.
pub async fn event_of(clients: &Clients, record: &Record) -> Result<Json, RedriveError> {
    match record {
        Record::Async { event, .. } | Record::Schedule { event, .. } => Ok(event.clone()),
        Record::Stream {
            stream_arn,
            shard_id,
            start,
            end,
            ..
        } => {
            let records = stream_records(clients, stream_arn, shard_id, start, end).await?;
            // Marked: the operator decided to try again (custody::redrive).
            Ok(json!({ "Records": records, custody::redrive::FIELD: true }))
        }
        Record::Unrecognised { why } => Err(RedriveError::Stream(why.clone())),
    }
}

/// The records of `shard_id` from `start` to `end` (inclusive), as Lambda delivers
/// them. Fails when the stream no longer has them (older than 24 hours).
pub async fn stream_records(
    clients: &Clients,
    stream_arn: &str,
    shard_id: &str,
    start: &str,
    end: &str,
) -> Result<Vec<Json>, RedriveError> {
    let err = |e: String| RedriveError::Stream(e);
    let mut iterator = clients
        .streams
        .get_shard_iterator()
        .stream_arn(stream_arn)
        .shard_id(shard_id)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .sequence_number(start)
        .send()
        .await
        .map_err(|e| err(custody::aws::error_text(&e)))?
        .shard_iterator;
    let end_number: u128 = end.parse().unwrap_or(u128::MAX);
    let mut out = Vec::new();
    // Bounded: a batch is at most the subscription's batch size; the loop ends at the
    // end sequence number, the shard's end, or after a page with nothing new.
    for _ in 0..100 {
        let Some(current) = iterator.take() else {
            break;
        };
        let page = clients
            .streams
            .get_records()
            .shard_iterator(current)
            .send()
            .await
            .map_err(|e| err(custody::aws::error_text(&e)))?;
        let records = page.records.unwrap_or_default();
        let mut done = records.is_empty();
        for record in &records {
            let sequence: u128 = record
                .dynamodb()
                .and_then(|d| d.sequence_number())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if sequence > end_number {
                done = true;
                break;
            }
            out.push(crate::event_sources::record_json(record, stream_arn));
        }
        if done {
            break;
        }
        iterator = page.next_shard_iterator;
    }
    if out.is_empty() {
        return Err(err(format!(
            "records {start}..{end} are no longer in the stream (it keeps them 24 hours)"
        )));
    }
    Ok(out)
}

/// Invokes `function` synchronously with `event`; an error when it failed.
pub async fn invoke(clients: &Clients, function: &str, event: &Json) -> Result<(), String> {
    let out = clients
        .lambda
        .invoke()
        .function_name(function)
        .invocation_type(InvocationType::RequestResponse)
        .payload(Blob::new(event.to_string()))
        .send()
        .await
        .map_err(|e| custody::aws::error_text(&e))?;
    match out.function_error() {
        Some(kind) => {
            let payload = out
                .payload()
                .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned())
                .unwrap_or_default();
            let message = serde_json::from_str::<Json>(&payload)
                .ok()
                .and_then(|p| p["errorMessage"].as_str().map(str::to_owned))
                .unwrap_or(payload);
            Err(format!("{kind}: {message}"))
        }
        None => Ok(()),
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    pub queue_url: String,
    /// Replays into this function instead of the one each record names.
    pub function: Option<String>,
    pub dry_run: bool,
    pub limit: usize,
}

/// Replays (or, dry, lists) the queue's messages. `progress(done, total, summary)` is
/// called after each message.
pub async fn run(
    clients: &Clients,
    options: &Options,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Report, RedriveError> {
    let messages = receive(
        clients,
        &options.queue_url,
        options.function.as_deref(),
        options.limit,
    )
    .await?;
    let mut report = Report::default();
    for message in &messages {
        match &message.record {
            Record::Unrecognised { why } => report.skipped.push((message.id.clone(), why.clone())),
            record => report.planned.push((message.id.clone(), record.summary())),
        }
    }
    if options.dry_run {
        for message in &messages {
            release(clients, &options.queue_url, message).await;
        }
        return Ok(report);
    }
    let total = messages.len();
    for (done, message) in messages.iter().enumerate() {
        let summary = message.record.summary();
        let Some(function) = message.record.function() else {
            release(clients, &options.queue_url, message).await;
            progress(done + 1, total, &summary);
            continue;
        };
        let outcome = match event_of(clients, &message.record).await {
            Ok(event) => invoke(clients, function, &event).await,
            Err(err) => Err(err.to_string()),
        };
        match outcome {
            Ok(()) => {
                clients
                    .sqs
                    .delete_message()
                    .queue_url(&options.queue_url)
                    .receipt_handle(&message.receipt)
                    .send()
                    .await
                    .map_err(|e| RedriveError::Sqs(custody::aws::error_text(&e)))?;
                report.replayed += 1;
            }
            Err(why) => {
                release(clients, &options.queue_url, message).await;
                report.failed.push((message.id.clone(), why));
            }
        }
        progress(done + 1, total, &summary);
    }
    Ok(report)
}

/// The queue's visible messages (`ApproximateNumberOfMessages`, what the failure
/// queue alarms watch as `ApproximateNumberOfMessagesVisible`).
pub async fn visible_messages(clients: &Clients, queue_url: &str) -> Result<u64, RedriveError> {
    let out = clients
        .sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| RedriveError::Sqs(custody::aws::error_text(&e)))?;
    Ok(out
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stack_resolves_logical_ids_of_the_right_type_only() {
        let resource = |logical: &str, kind: &str, physical: &str| super::StackResource {
            logical_id: logical.into(),
            resource_type: kind.into(),
            physical_id: physical.into(),
        };
        let resources = [
            resource(
                "ImportFailureQueue",
                "AWS::SQS::Queue",
                "https://sqs.eu-west-1.amazonaws.com/1/custody-import-failures-prod",
            ),
            resource(
                "ImportFunction",
                "AWS::Lambda::Function",
                "custody-prod-Import-AbC",
            ),
        ];
        assert_eq!(
            super::resolve_in_stack(&resources, "ImportFailureQueue", "AWS::SQS::Queue"),
            "https://sqs.eu-west-1.amazonaws.com/1/custody-import-failures-prod"
        );
        assert_eq!(
            super::resolve_in_stack(&resources, "ImportFunction", "AWS::Lambda::Function"),
            "custody-prod-Import-AbC"
        );
        // A logical id of another type, or no logical id at all, stays as given.
        assert_eq!(
            super::resolve_in_stack(&resources, "ImportFunction", "AWS::SQS::Queue"),
            "ImportFunction"
        );
        assert_eq!(
            super::resolve_in_stack(&resources, "custody-dsar-failures-prod", "AWS::SQS::Queue"),
            "custody-dsar-failures-prod"
        );
    }

    use super::*;

    fn no_attributes() -> HashMap<String, String> {
        HashMap::new()
    }

    #[test]
    fn the_three_record_kinds_and_anything_else() {
        let s3 = json!({"Records": [{"eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "imports/acme/01x/upload.csv"}}}]});
        let async_record = json!({
            "version": "1.0",
            "requestContext": {"functionArn": "arn:aws:lambda:us-east-1:1:function:import:$LATEST",
                               "condition": "RetriesExhausted"},
            "requestPayload": s3,
        });
        let record = Record::classify(&async_record.to_string(), &no_attributes(), None);
        assert_eq!(
            record,
            Record::Async {
                function: "import".into(),
                event: s3.clone()
            }
        );
        assert_eq!(
            record.summary(),
            "async → import: ObjectCreated:Put s3://b/imports/acme/01x/upload.csv"
        );

        let stream = json!({
            "requestContext": {"functionArn": "arn:aws:lambda:us-east-1:1:function:custody-dsar-prod"},
            "DDBStreamBatchInfo": {"streamArn": "arn:s", "shardId": "sh", "startSequenceNumber": "10",
                                   "endSequenceNumber": "12", "batchSize": 3},
        });
        assert_eq!(
            Record::classify(&stream.to_string(), &no_attributes(), None),
            Record::Stream {
                function: "custody-dsar-prod".into(),
                stream_arn: "arn:s".into(),
                shard_id: "sh".into(),
                start: "10".into(),
                end: "12".into(),
            }
        );

        let attributes: HashMap<String, String> = [(
            "TARGET_ARN".to_owned(),
            "arn:aws:lambda:us-east-1:1:function:custody-export-prod".to_owned(),
        )]
        .into();
        let record = Record::classify(r#"{"tenant_id":"acme"}"#, &attributes, None);
        assert_eq!(
            record,
            Record::Schedule {
                function: "custody-export-prod".into(),
                event: json!({"tenant_id": "acme"})
            }
        );
        assert_eq!(
            record.summary(),
            "schedule → custody-export-prod: tenant acme"
        );

        // An override names the function; anything else is unrecognised, never guessed.
        assert_eq!(
            Record::classify(&async_record.to_string(), &no_attributes(), Some("other")).function(),
            Some("other")
        );
        for body in [
            "not json",
            "{}",
            r#"{"requestContext": {"functionArn": "f"}}"#,
        ] {
            assert!(
                matches!(
                    Record::classify(body, &no_attributes(), None),
                    Record::Unrecognised { .. }
                ),
                "{body}"
            );
        }
        let partial =
            json!({"requestContext": {"functionArn": "f"}, "DDBStreamBatchInfo": {"shardId": "x"}});
        assert!(matches!(
            Record::classify(&partial.to_string(), &no_attributes(), None),
            Record::Unrecognised { .. }
        ));
    }

    #[test]
    fn function_names_from_arns() {
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:1:function:import:$LATEST"),
            "import"
        );
        assert_eq!(function_name("arn:aws:lambda:us-east-1:1:function:x"), "x");
        assert_eq!(function_name("plain"), "plain");
    }
}
