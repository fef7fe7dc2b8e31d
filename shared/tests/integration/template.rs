//! template.yaml is held to the code: retention numbers, TTL settings and the
//! functions' environment. No emulator needed.

use custody::config::vars;
use custody::retention::{
    ABORT_INCOMPLETE_MULTIPART_DAYS, NONCURRENT_VERSION_DAYS, RetentionClass, S3_TAG_KEY, Store,
    TTL_ATTRIBUTE,
};
use serde_yaml::Value;

fn template() -> Value {
    custody_local::provision::load_template(&custody_local::template_path()).unwrap()
}

fn resource<'a>(template: &'a Value, logical: &str) -> &'a Value {
    template["Resources"]
        .get(logical)
        .unwrap_or_else(|| panic!("template has no {logical}"))
}

fn rules<'a>(template: &'a Value, bucket: &str) -> &'a Vec<Value> {
    resource(template, bucket)["Properties"]["LifecycleConfiguration"]["Rules"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{bucket} has no lifecycle rules"))
}

fn tag_class(rule: &Value) -> Option<RetentionClass> {
    let filters = rule.get("TagFilters")?.as_sequence()?;
    let tag = filters
        .iter()
        .find(|t| t["Key"].as_str() == Some(S3_TAG_KEY))?;
    let name = tag["Value"].as_str()?;
    Some(
        RetentionClass::from_name(name)
            .unwrap_or_else(|| panic!("lifecycle rule names unknown class {name}")),
    )
}

#[test]
fn template_matches_retention() {
    let template = template();

    // Imports: one rule per class, with the class's days; every class has one.
    let import_rules = rules(&template, "ImportsBucket");
    let mut covered = Vec::new();
    for rule in import_rules {
        let id = rule["Id"].as_str().unwrap_or("?");
        if let Some(class) = tag_class(rule) {
            assert_eq!(
                class.store(),
                Store::ImportsBucket,
                "rule {id} is for {class:?}"
            );
            assert_eq!(
                rule["ExpirationInDays"].as_i64(),
                class.days(),
                "rule {id}: template days differ from retention::{class:?}"
            );
            covered.push(class);
        }
        if let Some(days) = rule.get("NoncurrentVersionExpiration") {
            assert_eq!(
                days["NoncurrentDays"].as_i64(),
                Some(i64::from(NONCURRENT_VERSION_DAYS)),
                "rule {id}"
            );
        }
        if let Some(abort) = rule.get("AbortIncompleteMultipartUpload") {
            assert_eq!(
                abort["DaysAfterInitiation"].as_i64(),
                Some(i64::from(ABORT_INCOMPLETE_MULTIPART_DAYS)),
                "rule {id}"
            );
        }
        // Expiring current versions without expiring noncurrent ones would keep the
        // data as an old version: every expiring rule must cover both.
        if rule.get("ExpirationInDays").is_some() {
            assert!(
                rule.get("NoncurrentVersionExpiration").is_some(),
                "rule {id} leaves old versions"
            );
        }
    }
    for class in RetentionClass::ALL
        .into_iter()
        .filter(|c| c.store() == Store::ImportsBucket)
    {
        assert!(covered.contains(&class), "no lifecycle rule for {class:?}");
    }
    assert!(
        import_rules
            .iter()
            .any(|r| r.get("AbortIncompleteMultipartUpload").is_some()),
        "unfinished uploads must be aborted"
    );

    // DSAR results: the whole bucket expires with its class.
    let dsar_rules = rules(&template, "DsarResultsBucket");
    let expiring: Vec<_> = dsar_rules
        .iter()
        .filter(|r| r.get("ExpirationInDays").is_some())
        .collect();
    assert_eq!(expiring.len(), 1);
    assert_eq!(
        expiring[0]["ExpirationInDays"].as_i64(),
        RetentionClass::DsarResult.days()
    );
    assert!(
        expiring[0].get("Prefix").is_none() && expiring[0].get("TagFilters").is_none(),
        "whole bucket"
    );
    assert_eq!(
        expiring[0]["NoncurrentVersionExpiration"]["NoncurrentDays"].as_i64(),
        Some(i64::from(NONCURRENT_VERSION_DAYS))
    );

    // The main table's TTL is on the attribute the code writes.
    let ttl = &resource(&template, "CustodyTable")["Properties"]["TimeToLiveSpecification"];
    assert_eq!(ttl["AttributeName"].as_str(), Some(TTL_ATTRIBUTE));
    assert_eq!(ttl["Enabled"].as_bool(), Some(true));
    for class in RetentionClass::ALL
        .into_iter()
        .filter(|c| c.store() == Store::Table)
    {
        assert!(
            class.duration().is_some(),
            "{class:?} lives in the table and must expire"
        );
    }

    // The audit log: TTL on the attribute entries carry, which holds the activity
    // class's days (the evidence class never expires), keyed as the code writes.
    let audit = &resource(&template, "AuditTable")["Properties"];
    let ttl = &audit["TimeToLiveSpecification"];
    assert_eq!(ttl["AttributeName"].as_str(), Some(TTL_ATTRIBUTE));
    assert_eq!(ttl["Enabled"].as_bool(), Some(true));
    assert_eq!(
        audit["KeySchema"][0]["AttributeName"].as_str(),
        Some(custody::audit::PARTITION_KEY)
    );
    assert_eq!(audit["DeletionProtectionEnabled"].as_bool(), Some(true));
    let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let start = day.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp();
    assert_eq!(
        custody::audit::AuditClass::Activity.expires_at(day),
        RetentionClass::AuditActivity
            .days()
            .map(|d| start + d * 86_400)
    );
    assert!(RetentionClass::AuditEvidence.duration().is_none());
    assert_eq!(custody::audit::AuditClass::Evidence.expires_at(day), None);
}

#[test]
fn globals_carry_every_config_variable() {
    let template = template();
    let variables = template["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .expect("Globals.Function.Environment.Variables");
    for name in vars::REQUIRED {
        assert!(
            variables.contains_key(Value::String(name.to_owned())),
            "template Globals lacks {name}"
        );
    }
}

#[test]
fn functions_run_on_arm64_al2023() {
    let template = template();
    let globals = &template["Globals"]["Function"];
    assert_eq!(globals["Runtime"].as_str(), Some("provided.al2023"));
    assert_eq!(globals["Architectures"][0].as_str(), Some("arm64"));
}

#[test]
fn buckets_are_tls_only_and_imports_require_kms() {
    let template = template();
    for policy in ["ImportsBucketPolicy", "DsarResultsBucketPolicy"] {
        let statements = resource(&template, policy)["Properties"]["PolicyDocument"]["Statement"]
            .as_sequence()
            .unwrap();
        assert!(
            statements
                .iter()
                .any(|s| s["Effect"].as_str() == Some("Deny")
                    && s["Condition"]["Bool"]["aws:SecureTransport"].as_str() == Some("false")),
            "{policy} must deny plain HTTP"
        );
    }
    let imports =
        resource(&template, "ImportsBucketPolicy")["Properties"]["PolicyDocument"]["Statement"]
            .as_sequence()
            .unwrap();
    assert!(imports.iter().any(|s| s["Effect"].as_str() == Some("Deny")
        && s["Action"].as_str() == Some("s3:PutObject")
        && s["Condition"]["StringNotEqualsIfExists"]["s3:x-amz-server-side-encryption"].as_str()
            == Some("aws:kms")));
    for bucket in ["ImportsBucket", "DsarResultsBucket"] {
        let props = &resource(&template, bucket)["Properties"];
        assert_eq!(
            props["VersioningConfiguration"]["Status"].as_str(),
            Some("Enabled")
        );
        let sse = &props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"];
        assert_eq!(sse["SSEAlgorithm"].as_str(), Some("aws:kms"), "{bucket}");
        for flag in [
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        ] {
            assert_eq!(
                props["PublicAccessBlockConfiguration"][flag].as_bool(),
                Some(true),
                "{bucket} {flag}"
            );
        }
    }
}

/// The audit log is append-only because no function may do anything to its table but
/// `PutItem` and `Query`: every policy statement that names the audit table (or every
/// resource, `*`) grants nothing else on DynamoDB.
#[test]
fn functions_may_only_append_to_and_query_the_audit_table() {
    let template = template();
    let resources = template["Resources"].as_mapping().unwrap();
    let mut checked = 0;
    for (logical, resource) in resources {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let policies = resource["Properties"]["Policies"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        for policy in &policies {
            for statement in policy["Statement"].as_sequence().into_iter().flatten() {
                let resource_text = format!("{:?}", statement["Resource"]);
                let names_audit = resource_text.contains("AuditTable");
                let wildcard = statement["Resource"].as_str() == Some("*");
                if !(names_audit || wildcard) || statement["Effect"].as_str() != Some("Allow") {
                    continue;
                }
                let actions: Vec<String> = match &statement["Action"] {
                    Value::String(a) => vec![a.clone()],
                    Value::Sequence(list) => list
                        .iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect(),
                    _ => Vec::new(),
                };
                for action in actions.iter().filter(|a| a.starts_with("dynamodb:")) {
                    assert!(
                        names_audit && (action == "dynamodb:PutItem" || action == "dynamodb:Query"),
                        "{logical:?} grants {action} on {resource_text}: the audit log must stay append-only"
                    );
                }
                if names_audit {
                    checked += 1;
                }
            }
        }
    }
    assert!(
        checked >= 5,
        "every function appends to the audit log ({checked} statements found)"
    );
}

/// `!Ref X` → `X`.
fn ref_target(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "!Ref" => tagged.value.as_str(),
        _ => None,
    }
}

#[test]
fn logs_and_backups_keep_the_promised_days() {
    let template = template();
    let resources = template["Resources"].as_mapping().expect("Resources");

    // Every function logs to a log group of its own whose retention is the table's.
    let mut functions = 0;
    for (logical, res) in resources {
        if res["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        functions += 1;
        let logical = logical.as_str().unwrap_or("?");
        let group = ref_target(&res["Properties"]["LoggingConfig"]["LogGroup"])
            .unwrap_or_else(|| panic!("{logical} has no LoggingConfig.LogGroup: !Ref <group>"));
        let group_res = resource(&template, group);
        assert_eq!(group_res["Type"].as_str(), Some("AWS::Logs::LogGroup"));
        assert_eq!(
            group_res["Properties"]["RetentionInDays"].as_i64(),
            RetentionClass::FunctionLog.days(),
            "{group}: retention differs from retention::FunctionLog"
        );
    }
    assert_eq!(functions, 6);
    // No log group without a retention (it would keep everything forever).
    for (logical, res) in resources {
        if res["Type"].as_str() == Some("AWS::Logs::LogGroup") {
            assert!(
                res["Properties"]["RetentionInDays"].as_i64().is_some(),
                "{logical:?} keeps logs forever"
            );
        }
    }

    // Both tables: point-in-time recovery on, with the promised window.
    for table in ["CustodyTable", "AuditTable"] {
        let pitr = &resource(&template, table)["Properties"]["PointInTimeRecoverySpecification"];
        assert_eq!(
            pitr["PointInTimeRecoveryEnabled"].as_bool(),
            Some(true),
            "{table}"
        );
        assert_eq!(
            pitr["RecoveryPeriodInDays"].as_i64(),
            RetentionClass::Backup.days(),
            "{table}: backup window differs from retention::Backup"
        );
    }
    assert_eq!(RetentionClass::FunctionLog.store(), Store::LogGroups);
    assert_eq!(RetentionClass::Backup.store(), Store::PointInTimeRecovery);
}

/// Every function that appends to the audit log may seal a segment, which signs a
/// checkpoint with the signing key: without `kms:Sign` the first append of a new day
/// would fail.
#[test]
fn every_audit_writer_may_sign_checkpoints() {
    let template = template();
    let resources = template["Resources"].as_mapping().unwrap();
    let mut writers = 0;
    for (logical, resource) in resources {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let statements: Vec<Value> = resource["Properties"]["Policies"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|p| p["Statement"].as_sequence().cloned().unwrap_or_default())
            .collect();
        let grants = |action: &str, on: &str| {
            statements.iter().any(|s| {
                let actions = format!("{:?}", s["Action"]);
                s["Effect"].as_str() == Some("Allow")
                    && actions.contains(&format!("\"{action}\""))
                    && format!("{:?}", s["Resource"]).contains(on)
            })
        };
        if grants("dynamodb:PutItem", "AuditTable") {
            writers += 1;
            assert!(
                grants("kms:Sign", "SigningKey"),
                "{logical:?} appends to the audit log but may not sign checkpoints"
            );
        }
    }
    assert_eq!(writers, 6, "all six functions append to the audit log");
}

/// `!If [NotifyAlarms, [!Ref AlarmTopicArn], !Ref AWS::NoValue]`: the topic when one is
/// configured, no action otherwise.
fn notifies_the_alarm_topic(actions: &Value) -> bool {
    let Value::Tagged(tagged) = actions else {
        return false;
    };
    let Some(args) = tagged.value.as_sequence() else {
        return false;
    };
    tagged.tag == "!If"
        && args.len() == 3
        && args[0].as_str() == Some("NotifyAlarms")
        && args[1].as_sequence().is_some_and(|topics| {
            topics.len() == 1 && ref_target(&topics[0]) == Some("AlarmTopicArn")
        })
        && ref_target(&args[2]) == Some("AWS::NoValue")
}

#[test]
fn alarms_watch_what_the_code_emits_and_notify_the_topic() {
    use custody::metrics::{FUNCTION_DIMENSION, NAMESPACE, names};

    let template = template();
    let topic = &template["Parameters"]["AlarmTopicArn"];
    assert!(topic["AllowedPattern"].as_str().is_some());
    assert!(topic["ConstraintDescription"].as_str().is_some());
    assert!(template["Conditions"].get("NotifyAlarms").is_some());

    let resources = template["Resources"].as_mapping().expect("Resources");
    let alarms: Vec<(&str, &Value)> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .map(|(l, r)| (l.as_str().unwrap_or("?"), &r["Properties"]))
        .collect();
    for (logical, alarm) in &alarms {
        assert!(
            notifies_the_alarm_topic(&alarm["AlarmActions"]),
            "{logical} does not notify AlarmTopicArn"
        );
        // Custom metrics: the code's namespace and names, the `function` dimension only.
        // (AWS/SQS alarms: `every_failure_queue_has_an_alarm`.)
        if !matches!(alarm["Namespace"].as_str(), Some("AWS/Lambda" | "AWS/SQS")) {
            assert_eq!(alarm["Namespace"].as_str(), Some(NAMESPACE), "{logical}");
            let name = alarm["MetricName"].as_str().unwrap_or_default();
            assert!(
                names::ALL.contains(&name),
                "{logical}: {name} is not emitted"
            );
            let dimensions = alarm["Dimensions"].as_sequence().expect("Dimensions");
            assert_eq!(dimensions.len(), 1, "{logical}");
            assert_eq!(dimensions[0]["Name"].as_str(), Some(FUNCTION_DIMENSION));
        }
    }
    let find = |metric: &str, function: &str| {
        alarms.iter().find(|(_, a)| {
            a["MetricName"].as_str() == Some(metric)
                && a["Dimensions"]
                    .as_sequence()
                    .and_then(|d| d.first())
                    .is_some_and(|d| ref_target(&d["Value"]) == Some(function))
        })
    };

    // (metric, the function that emits it): every metric that means work was lost
    // or is late pages someone.
    for (metric, function, what) in [
        (
            names::PRIVACY_REQUESTS_OVERDUE,
            "DsarFunction",
            "overdue privacy requests",
        ),
        (names::ACCOUNT_PURGES_STUCK, "DsarFunction", "stuck purges"),
        (
            names::PRIVACY_NOTICES_FAILED,
            "DsarFunction",
            "undelivered privacy notices",
        ),
        // Notices of filing and extension go out from the routes.
        (
            names::PRIVACY_NOTICES_FAILED,
            "DsarApiFunction",
            "undelivered privacy notices",
        ),
        (
            names::OAUTH_TOKENS_NOT_STORED,
            "ExportFunction",
            "issued tokens not stored",
        ),
        (
            names::PROVIDER_REVOCATIONS_FAILED,
            "OauthFunction",
            "grants not revoked",
        ),
        // Starting an account deletion revokes grants (a route).
        (
            names::PROVIDER_REVOCATIONS_FAILED,
            "DsarApiFunction",
            "grants not revoked",
        ),
    ] {
        let (logical, alarm) =
            find(metric, function).unwrap_or_else(|| panic!("no alarm on {what} ({metric})"));
        assert_eq!(alarm["Threshold"].as_i64(), Some(0), "{logical}");
        assert_eq!(
            alarm["ComparisonOperator"].as_str(),
            Some("GreaterThanThreshold"),
            "{logical}"
        );
    }

    // Errors and throttles of every function.
    for (logical, res) in resources {
        if res["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let function = logical.as_str().unwrap_or("?");
        for metric in ["Errors", "Throttles"] {
            let (alarm_id, alarm) = find(metric, function)
                .unwrap_or_else(|| panic!("no {metric} alarm for {function}"));
            assert_eq!(
                alarm["Namespace"].as_str(),
                Some("AWS/Lambda"),
                "{alarm_id}"
            );
            assert_eq!(
                alarm["Dimensions"][0]["Name"].as_str(),
                Some("FunctionName"),
                "{alarm_id}"
            );
        }
    }
}

/// `!GetAtt X.Arn` → `X`.
fn get_att_arn(value: &Value) -> Option<&str> {
    match value {
        Value::Tagged(tagged) if tagged.tag == "!GetAtt" => {
            tagged.value.as_str()?.strip_suffix(".Arn")
        }
        _ => None,
    }
}

/// The queue an on-failure destination names; it must be one of the template's
/// SQS queues, by `!GetAtt <queue>.Arn`, with `Type: SQS`, which makes SAM grant the
/// function's role `sqs:SendMessage` on exactly that queue (infra/deploycheck holds
/// the transformed roles to it).
fn on_failure_queue<'a>(template: &Value, where_: &str, destination: &'a Value) -> &'a str {
    let on_failure = &destination["OnFailure"];
    assert_eq!(
        on_failure["Type"].as_str(),
        Some("SQS"),
        "{where_}: OnFailure.Type"
    );
    let queue = get_att_arn(&on_failure["Destination"])
        .unwrap_or_else(|| panic!("{where_}: OnFailure.Destination must be !GetAtt <queue>.Arn"));
    assert_eq!(
        resource(template, queue)["Type"].as_str(),
        Some("AWS::SQS::Queue"),
        "{where_}: {queue}"
    );
    queue
}

/// Nothing lost silently: every asynchronous way into a function ends, after its
/// retries, in a failure queue. Stream events carry `DestinationConfig.OnFailure`;
/// a function invoked asynchronously (an S3 notification, a Scheduler target) has an
/// `EventInvokeConfig` with bounded retries and an on-failure queue.
#[test]
fn every_asynchronous_source_has_a_failure_destination() {
    let template = template();
    let resources = template["Resources"].as_mapping().unwrap();
    // Functions the scheduler role may invoke are Scheduler targets, invoked
    // asynchronously like an S3 notification.
    let scheduler_policy = format!(
        "{:?}",
        resource(&template, "ExportSchedulerRole")["Properties"]["Policies"]
    );
    let mut queues_used = std::collections::BTreeSet::new();
    let mut async_functions = 0;
    let mut stream_events = 0;
    for (logical, res) in resources {
        if res["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let logical = logical.as_str().unwrap_or("?");
        let props = &res["Properties"];
        let mut invoked_async = props["FunctionName"]
            .as_str()
            .or_else(|| match &props["FunctionName"] {
                Value::Tagged(t) => t.value.as_str(),
                _ => None,
            })
            .is_some_and(|name| scheduler_policy.contains(name));
        let mut queue_of_function = None;
        for (name, event) in props["Events"].as_mapping().into_iter().flatten() {
            let name = name.as_str().unwrap_or("?");
            match event["Type"].as_str() {
                Some("S3")
                | Some("Schedule")
                | Some("ScheduleV2")
                | Some("SNS")
                | Some("EventBridgeRule")
                | Some("CloudWatchEvent") => invoked_async = true,
                Some("DynamoDB") | Some("Kinesis") | Some("SQS") => {
                    stream_events += 1;
                    let where_ = format!("{logical}.{name}");
                    let queue = on_failure_queue(
                        &template,
                        &where_,
                        &event["Properties"]["DestinationConfig"],
                    );
                    let retries = event["Properties"]["MaximumRetryAttempts"].as_i64();
                    assert!(
                        retries.is_some_and(|r| r >= 0),
                        "{where_}: MaximumRetryAttempts must be bounded, or a poisoned record blocks its shard for a day"
                    );
                    let age = event["Properties"]["MaximumRecordAgeInSeconds"].as_i64();
                    assert!(
                        age.is_some_and(|a| (60..86_400).contains(&a)),
                        "{where_}: records must go to the queue before the stream's 24 h drop them"
                    );
                    assert_eq!(
                        event["Properties"]["BisectBatchOnFunctionError"].as_bool(),
                        Some(true),
                        "{where_}: one poisoned record must not fail its whole batch"
                    );
                    queue_of_function.get_or_insert(queue);
                    assert_eq!(
                        queue_of_function,
                        Some(queue),
                        "{where_}: one queue per function"
                    );
                    queues_used.insert(queue.to_owned());
                }
                _ => {}
            }
        }
        if invoked_async {
            async_functions += 1;
            let config = &props["EventInvokeConfig"];
            let retries = config["MaximumRetryAttempts"].as_i64();
            assert!(
                retries.is_some_and(|r| (0..=2).contains(&r)),
                "{logical}: EventInvokeConfig.MaximumRetryAttempts"
            );
            let queue = on_failure_queue(&template, logical, &config["DestinationConfig"]);
            queue_of_function.get_or_insert(queue);
            assert_eq!(
                queue_of_function,
                Some(queue),
                "{logical}: one queue per function"
            );
            queues_used.insert(queue.to_owned());
        }
    }
    // import and expiry (S3), export (Scheduler), dsar (the daily deadline check),
    // oauth (the sweep of unclaimed installs); dsar and expiry (stream).
    assert_eq!(async_functions, 5);
    assert_eq!(stream_events, 2);

    // The export function puts that same queue on every schedule as its
    // dead-letter queue, and the scheduler role may send there.
    let export = &resource(&template, "ExportFunction")["Properties"];
    let dlq = get_att_arn(
        &export["Environment"]["Variables"][custody::schedule::DEAD_LETTER_QUEUE_ARN_VAR],
    )
    .expect("ExportFunction names its schedules' dead-letter queue by !GetAtt");
    assert_eq!(
        Some(dlq),
        get_att_arn(&export["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"])
    );
    assert!(
        scheduler_policy.contains("sqs:SendMessage") && scheduler_policy.contains(dlq),
        "the scheduler role must be allowed to send to {dlq}"
    );

    // Every queue is used; nothing else is a queue.
    let all_queues: std::collections::BTreeSet<String> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::SQS::Queue"))
        .filter_map(|(l, _)| l.as_str().map(str::to_owned))
        .collect();
    assert_eq!(all_queues, queues_used);
    assert_eq!(all_queues.len(), 5);
}

/// Failure queues keep a record for the failed-event class's days, sealed with the
/// data key; every role that sends to one (the functions with an on-failure
/// destination, the scheduler role) may use the key through SQS.
#[test]
fn failure_queues_are_encrypted_and_keep_the_promised_days() {
    let template = template();
    let resources = template["Resources"].as_mapping().unwrap();
    let days = RetentionClass::FailedEvent.days().expect("days");
    assert_eq!(RetentionClass::FailedEvent.store(), Store::FailureQueues);
    let mut queues = 0;
    for (logical, res) in resources {
        if res["Type"].as_str() != Some("AWS::SQS::Queue") {
            continue;
        }
        queues += 1;
        let props = &res["Properties"];
        assert_eq!(
            props["MessageRetentionPeriod"].as_i64(),
            Some(days * 86_400),
            "{logical:?}: retention differs from retention::FailedEvent"
        );
        assert_eq!(
            get_att_arn(&props["KmsMasterKeyId"]),
            Some("DataKey"),
            "{logical:?} must be SSE-KMS with the data key"
        );
    }
    assert!(queues > 0);

    let may_use_key_via_sqs = |statements: &[Value]| {
        statements.iter().any(|s| {
            let actions = format!("{:?}", s["Action"]);
            s["Effect"].as_str() == Some("Allow")
                && actions.contains("kms:GenerateDataKey")
                && actions.contains("kms:Decrypt")
                && get_att_arn(&s["Resource"]) == Some("DataKey")
                && format!("{:?}", s["Condition"]).contains("sqs.${AWS::Region}.amazonaws.com")
        })
    };
    for (logical, res) in resources {
        let statements: Vec<Value> = match res["Type"].as_str() {
            Some("AWS::Serverless::Function")
                if res["Properties"]["EventInvokeConfig"].is_mapping()
                    || format!("{:?}", res["Properties"]["Events"]).contains("OnFailure") =>
            {
                res["Properties"]["Policies"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .flat_map(|p| p["Statement"].as_sequence().cloned().unwrap_or_default())
                    .collect()
            }
            Some("AWS::IAM::Role") if format!("{res:?}").contains("sqs:SendMessage") => {
                res["Properties"]["Policies"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .flat_map(|p| {
                        p["PolicyDocument"]["Statement"]
                            .as_sequence()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect()
            }
            _ => continue,
        };
        assert!(
            may_use_key_via_sqs(&statements),
            "{logical:?} sends to an SSE-KMS queue but may not use the data key through SQS"
        );
    }
}

/// Any message in any failure queue pages: every `AWS::SQS::Queue` has an alarm on its
/// visible messages above zero that notifies the alarm topic.
#[test]
fn every_failure_queue_has_an_alarm() {
    let template = template();
    let resources = template["Resources"].as_mapping().unwrap();
    let queues: Vec<String> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::SQS::Queue"))
        .filter_map(|(name, _)| name.as_str().map(str::to_owned))
        .collect();
    assert!(queues.len() >= 4, "{queues:?}");
    for queue in &queues {
        let alarm = resources.iter().find(|(_, r)| {
            let props = &r["Properties"];
            r["Type"].as_str() == Some("AWS::CloudWatch::Alarm")
                && props["Namespace"].as_str() == Some("AWS/SQS")
                && props["MetricName"].as_str() == Some("ApproximateNumberOfMessagesVisible")
                && format!("{:?}", props["Dimensions"]).contains(&format!("{queue}.QueueName"))
        });
        let Some((name, alarm)) = alarm else {
            panic!("no alarm watches {queue}");
        };
        let props = &alarm["Properties"];
        assert_eq!(props["Threshold"].as_i64(), Some(0), "{name:?}");
        assert_eq!(
            props["ComparisonOperator"].as_str(),
            Some("GreaterThanThreshold"),
            "{name:?}"
        );
        assert!(notifies_the_alarm_topic(&props["AlarmActions"]), "{name:?}");
    }
}

/// Security: tenant and role are the JWT's `custom:tenant_id` / `custom:role`. Cognito
/// lets a user update every attribute their app client may write (by default, all),
/// so no client of the template's pool may write either; the pool has them, and the
/// API's authorizer trusts that pool when the template creates it.
#[test]
fn no_app_client_writes_tenant_or_role() {
    let template = template();
    let resources = template["Resources"].as_mapping().expect("Resources");
    let pool = resource(&template, "UserPool");
    let schema: Vec<&str> = pool["Properties"]["Schema"]
        .as_sequence()
        .expect("UserPool schema")
        .iter()
        .filter_map(|a| a["Name"].as_str())
        .collect();
    assert!(
        schema.contains(&"tenant_id") && schema.contains(&"role"),
        "{schema:?}"
    );
    assert_eq!(
        pool["Properties"]["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"].as_bool(),
        Some(true),
        "self sign-up would let anyone into the pool"
    );

    let clients: Vec<(&str, &Value)> = resources
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Cognito::UserPoolClient"))
        .map(|(l, r)| (l.as_str().unwrap_or("?"), r))
        .collect();
    assert!(!clients.is_empty(), "the template has no app client");
    for (logical, client) in clients {
        let props = &client["Properties"];
        // Absent WriteAttributes means every attribute is writable.
        let writes: Vec<&str> = props["WriteAttributes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{logical}: WriteAttributes must be listed"))
            .iter()
            .map(|a| a.as_str().expect("attribute name"))
            .collect();
        for forbidden in ["custom:tenant_id", "custom:role"] {
            assert!(
                !writes.contains(&forbidden),
                "{logical} lets users write {forbidden}"
            );
        }
        assert!(
            writes.iter().all(|a| !a.starts_with("custom:")),
            "{logical} writes custom attributes: {writes:?}"
        );
        let reads: Vec<&str> = props["ReadAttributes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{logical}: ReadAttributes must be listed"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for needed in ["custom:tenant_id", "custom:role"] {
            assert!(
                reads.contains(&needed),
                "{logical}: ID tokens would lack {needed}"
            );
        }
        assert_eq!(
            props["UserPoolId"]
                .as_str()
                .or(ref_target(&props["UserPoolId"])),
            Some("UserPool")
        );
    }

    // The authorizer trusts the pool's issuer and client when the pool exists.
    let jwt = &resource(&template, "HttpApi")["Properties"]["Auth"]["Authorizers"]["OidcJwt"]["JwtConfiguration"];
    let issuer = format!("{:?}", jwt["issuer"]);
    assert!(
        issuer.contains("CreateUserPool")
            && issuer.contains("cognito-idp")
            && issuer.contains("${UserPool}"),
        "{issuer}"
    );
    let audience = format!("{:?}", jwt["audience"]);
    assert!(audience.contains("UserPoolApiClient"), "{audience}");

    // The unprefixed claims are off unless the operator turns them on.
    let globals = &template["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(
        ref_target(&globals[vars::OIDC_PLAIN_CLAIMS]),
        Some("OidcPlainClaims")
    );
    assert_eq!(
        template["Parameters"]["OidcPlainClaims"]["Default"].as_str(),
        Some("disabled")
    );
}

/// Security: no function may read or write an S3 resource the deployer names by
/// parameter (a customer's bucket). Customer buckets are written only through the
/// customer's own role (export's `customer_role`), so one tenant cannot aim custody's
/// credentials at another customer's bucket.
#[test]
fn functions_touch_only_their_own_buckets() {
    let template = template();
    let parameters: Vec<String> = template["Parameters"]
        .as_mapping()
        .expect("Parameters")
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .filter(|name| name != "Stage")
        .collect();
    let mut checked = 0;
    for (logical, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        for policy in resource["Properties"]["Policies"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            for statement in policy["Statement"].as_sequence().into_iter().flatten() {
                let actions = format!("{:?}", statement["Action"]);
                if !actions.contains("s3:") {
                    continue;
                }
                checked += 1;
                let resource_text = format!("{:?}", statement["Resource"]);
                for name in &parameters {
                    assert!(
                        !resource_text.contains(name.as_str()),
                        "{logical:?} grants {actions} on parameter {name}: {resource_text}"
                    );
                }
                assert!(
                    !resource_text.contains("\"*\"") && !resource_text.contains(":::*"),
                    "{logical:?} grants {actions} on any bucket: {resource_text}"
                );
            }
        }
    }
    assert!(checked > 0, "no S3 statement found");
}

/// The export function reads two secrets and no other: the OAuth client secrets (token
/// refresh) and the pseudonym application secret (a run tests contacts against the
/// tenant's suppression list by pseudonym, `export::suppress`).
#[test]
fn export_reads_only_the_client_and_pseudonym_secrets() {
    let template = template();
    let mut read = Vec::new();
    for policy in resource(&template, "ExportFunction")["Properties"]["Policies"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        for statement in policy["Statement"].as_sequence().into_iter().flatten() {
            let actions = format!("{:?}", statement["Action"]);
            if !actions.contains("secretsmanager:") {
                continue;
            }
            assert_eq!(
                statement["Action"].as_str(),
                Some("secretsmanager:GetSecretValue"),
                "{actions}"
            );
            let secret = ref_target(&statement["Resource"])
                .unwrap_or_else(|| panic!("not one secret by !Ref: {:?}", statement["Resource"]));
            read.push(secret.to_owned());
        }
    }
    read.sort();
    assert_eq!(read, ["OauthClientSecrets", "PseudonymSecret"]);
}

#[test]
fn no_function_enables_fault_injection() {
    // Fault injection is test-only: no deployed function may set its variables.
    let text = std::fs::read_to_string(custody_local::template_path()).unwrap();
    assert!(!text.contains(custody::faults::SEED_ENV));
    assert!(!text.contains(custody::faults::RATE_ENV));
}

/// The purge's final sweep waits the full grace in AWS: no function's environment in
/// the template shortens it (the local demo stack does, to keep the demo quick).
#[test]
fn the_template_never_shortens_the_purge_grace() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml"))
        .expect("template.yaml");
    assert!(!text.contains("CUSTODY_DSAR_PURGE_GRACE_SECONDS"));
}

/// The providers the template configures ask for no scope beyond the code's own
/// defaults (`custody::oauth::ProviderConfig`), which are what custody uses: a scope
/// custody never uses (Gmail's, once) is consent the user gives for nothing. Each
/// provider entry is parsed through the code's own configuration type.
#[test]
fn oauth_providers_ask_only_for_the_scopes_custody_uses() {
    let template = template();
    let mut seen = 0;
    for function in ["OauthFunction", "ExportFunction"] {
        let value = &resource(&template, function)["Properties"]["Environment"]["Variables"]["CUSTODY_OAUTH_PROVIDERS"];
        let text = match value {
            Value::Tagged(tagged) => tagged.value.as_str(),
            other => other.as_str(),
        }
        .unwrap_or_else(|| panic!("{function}: CUSTODY_OAUTH_PROVIDERS is not a string"));
        // `${Parameter}` placeholders stand for ids: any valid id will do here.
        let mut json = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            json.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closed placeholder") + start;
            json.push_str("placeholder-id");
            rest = &rest[end + 1..];
        }
        json.push_str(rest);
        let entries: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        for entry in &entries {
            assert!(
                entry.get("scopes").is_none(),
                "{function}: provider {} overrides the code's scopes: {}",
                entry["name"],
                entry["scopes"]
            );
        }
        custody::oauth::Providers::from_json(&json).unwrap_or_else(|e| panic!("{function}: {e}"));
        seen += entries.len();
    }
    assert!(seen >= 3, "only {seen} provider entries found");
}

// ---------------------------------------------------------------- the console
//
// infra/src/console.rs states the console's browser-facing contract (CSP, security
// headers, CORS of the API and of the imports bucket) and the local stack applies
// it; these hold template.yaml's production side to the same constants.

use custody_local::console;
use std::collections::HashMap;

/// What an expression of the template evaluates to.
#[derive(Debug, Clone, PartialEq)]
enum Evaluated {
    Text(String),
    List(Vec<String>),
}

impl Evaluated {
    fn text(self) -> String {
        match self {
            Evaluated::Text(t) => t,
            other => panic!("expected text, got {other:?}"),
        }
    }
    fn list(self) -> Vec<String> {
        match self {
            Evaluated::List(l) => l,
            other => panic!("expected a list, got {other:?}"),
        }
    }
}

/// Parameter, pseudo-parameter, resource and condition values for [`evaluate`].
#[derive(Default)]
struct Scope {
    /// `Ref`/`${Name}` and `${Resource.Attribute}` values.
    values: HashMap<String, String>,
    /// `Ref`s that are lists (CommaDelimitedList parameters).
    lists: HashMap<String, Vec<String>>,
    conditions: HashMap<String, bool>,
}

impl Scope {
    fn with(mut self, name: &str, value: &str) -> Self {
        self.values.insert(name.into(), value.into());
        self
    }
    fn list(mut self, name: &str, value: &[&str]) -> Self {
        self.lists
            .insert(name.into(), value.iter().map(|v| v.to_string()).collect());
        self
    }
    fn when(mut self, condition: &str, holds: bool) -> Self {
        self.conditions.insert(condition.into(), holds);
        self
    }
    /// Stage, region, account; the console distribution's domain.
    fn standard() -> Self {
        Scope::default()
            .with("Stage", "prod")
            .with("AWS::Region", "eu-west-1")
            .with("AWS::AccountId", "123456789012")
            .with("AWS::Partition", "aws")
            .with("AWS::URLSuffix", "amazonaws.com")
            .with(
                "ConsoleDistribution.DomainName",
                "d111111abcdef8.cloudfront.net",
            )
            .with("ConsoleOrigin", "https://console.example.com")
    }
    fn substitute(&self, text: &str, extra: &HashMap<String, String>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closed ${") + start;
            let name = &rest[start + 2..end];
            let value = extra
                .get(name)
                .or_else(|| self.values.get(name))
                .unwrap_or_else(|| panic!("no value for ${{{name}}} in {text}"));
            out.push_str(value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// Evaluates the intrinsics the console's resources use (Ref, Sub, Join, Select,
/// Split, If) as CloudFormation would, given `scope`.
fn evaluate(value: &Value, scope: &Scope) -> Evaluated {
    let args = |v: &Value| -> Vec<Value> { v.as_sequence().cloned().unwrap_or_default() };
    match value {
        Value::String(s) => Evaluated::Text(s.clone()),
        Value::Sequence(items) => Evaluated::List(
            items
                .iter()
                .map(|item| evaluate(item, scope).text())
                .collect(),
        ),
        Value::Tagged(tagged) => {
            let arg = &tagged.value;
            if tagged.tag == "!Ref" {
                let name = arg.as_str().expect("Ref name");
                if let Some(list) = scope.lists.get(name) {
                    return Evaluated::List(list.clone());
                }
                return Evaluated::Text(
                    scope
                        .values
                        .get(name)
                        .unwrap_or_else(|| panic!("no value for Ref {name}"))
                        .clone(),
                );
            }
            if tagged.tag == "!Sub" {
                return Evaluated::Text(match arg {
                    Value::String(text) => scope.substitute(text, &HashMap::new()),
                    _ => {
                        let parts = args(arg);
                        let variables = parts[1]
                            .as_mapping()
                            .expect("Sub variables")
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().unwrap().to_owned(), evaluate(v, scope).text())
                            })
                            .collect();
                        scope.substitute(parts[0].as_str().expect("Sub text"), &variables)
                    }
                });
            }
            let parts = args(arg);
            if tagged.tag == "!Join" {
                let separator = parts[0].as_str().expect("Join separator");
                return Evaluated::Text(evaluate(&parts[1], scope).list().join(separator));
            }
            if tagged.tag == "!Split" {
                let separator = parts[0].as_str().expect("Split separator");
                let text = evaluate(&parts[1], scope).text();
                return Evaluated::List(text.split(separator).map(str::to_owned).collect());
            }
            if tagged.tag == "!Select" {
                let index = parts[0].as_u64().expect("Select index") as usize;
                let list = evaluate(&parts[1], scope).list();
                return Evaluated::Text(
                    list.get(index)
                        .unwrap_or_else(|| panic!("Select {index} of {list:?}"))
                        .clone(),
                );
            }
            if tagged.tag == "!If" {
                let condition = parts[0].as_str().expect("If condition");
                let holds = *scope
                    .conditions
                    .get(condition)
                    .unwrap_or_else(|| panic!("no value for condition {condition}"));
                return evaluate(&parts[if holds { 1 } else { 2 }], scope);
            }
            panic!("evaluate: {} is not handled", tagged.tag)
        }
        other => panic!("evaluate: unexpected {other:?}"),
    }
}

/// The two console origins: the distribution's own domain, and ConsoleOrigin.
fn console_origins() -> [(Scope, &'static str); 2] {
    [
        (
            Scope::standard().when("HasConsoleOrigin", false),
            "https://d111111abcdef8.cloudfront.net",
        ),
        (
            Scope::standard().when("HasConsoleOrigin", true),
            "https://console.example.com",
        ),
    ]
}

/// A list property that must allow exactly the console origin, whichever it is, and
/// the embedding apps' origins (`ImporterOrigins`) when there are any.
fn assert_the_console_and_importer_origins(what: &str, origins: &Value) {
    let embedders = ["https://app.example.com", "https://crm.example.org:8443"];
    for (scope, origin) in console_origins() {
        let without = scope
            .when("HasImporterOrigins", false)
            .with("ImporterOrigins", "");
        assert_eq!(evaluate(origins, &without).list(), [origin], "{what}");
        let with = without
            .when("HasImporterOrigins", true)
            .with("ImporterOrigins", &embedders.join(","));
        assert_eq!(
            evaluate(origins, &with).list(),
            [origin, embedders[0], embedders[1]],
            "{what}"
        );
    }
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
        .iter()
        .map(|v| v.as_str().expect("a string"))
        .collect()
}

fn console_security_headers(template: &Value) -> &Value {
    &resource(template, "ConsoleResponseHeadersPolicy")["Properties"]["ResponseHeadersPolicyConfig"]
        ["SecurityHeadersConfig"]
}

/// Security: the console's CSP allows no inline or eval'd code, no framing, and
/// `fetch` only to itself, the API, the issuer and the imports bucket: it is
/// `console::content_security_policy`, the one the local stack serves, with
/// placeholders for what is known at deploy time, and those evaluate to origins.
#[test]
fn console_csp_is_the_local_one_without_inline_code() {
    let template = template();
    let csp = &console_security_headers(&template)["ContentSecurityPolicy"];
    assert_eq!(csp["Override"].as_bool(), Some(true));
    let sub = match &csp["ContentSecurityPolicy"] {
        Value::Tagged(tagged) if tagged.tag == "!Sub" => tagged.value.clone(),
        other => panic!("the CSP is not a !Sub: {other:?}"),
    };
    let text = sub[0].as_str().expect("the CSP's text");
    for forbidden in ["unsafe-inline", "unsafe-eval", "*"] {
        assert!(!text.contains(forbidden), "CSP allows {forbidden}: {text}");
    }
    assert!(text.contains("frame-ancestors 'none'"), "{text}");

    // The same directives, in the same order, as the local stack's.
    let imports_bucket = match &resource(&template, "ImportsBucket")["Properties"]["BucketName"] {
        Value::Tagged(tagged) if tagged.tag == "!Sub" => tagged.value.as_str().unwrap().to_owned(),
        other => panic!("ImportsBucket name: {other:?}"),
    };
    let s3 = format!("https://{imports_bucket}.s3.${{AWS::Region}}.${{AWS::URLSuffix}}");
    assert_eq!(
        text,
        console::content_security_policy("${ApiOrigin}", "${IssuerOrigin}", &s3)
    );

    // The placeholders evaluate to origins (a path would narrow connect-src to it).
    let variables = &sub[1];
    let api = Scope::default().with("PublicApiBaseUrl", "https://api.example.com:8443/v1/x");
    assert_eq!(
        evaluate(&variables["ApiOrigin"], &api).text(),
        console::origin_of("https://api.example.com:8443/v1/x")
    );
    // Cognito: the issuer (discovery, keys) and the hosted UI domain (token endpoint),
    // as the authorizer and the UserPoolDomain name them.
    let cognito = Scope::standard()
        .when("CreateUserPool", true)
        .with("UserPool", "eu-west-1_AbCdEf123")
        .with("OidcIssuer", "");
    let issuer = evaluate(
        &resource(&template, "HttpApi")["Properties"]["Auth"]["Authorizers"]["OidcJwt"]
            ["JwtConfiguration"]["issuer"],
        &cognito,
    )
    .text();
    let domain = evaluate(
        &resource(&template, "UserPoolDomain")["Properties"]["Domain"],
        &cognito,
    )
    .text();
    assert_eq!(
        evaluate(&variables["IssuerOrigin"], &cognito).text(),
        format!(
            "{} https://{domain}.auth.eu-west-1.amazoncognito.com",
            console::origin_of(&issuer)
        )
    );
    let external = Scope::standard()
        .when("CreateUserPool", false)
        .with("OidcIssuer", "https://login.example.com:8443/tenant/v2.0");
    assert_eq!(
        evaluate(&variables["IssuerOrigin"], &external).text(),
        "https://login.example.com:8443"
    );
}

/// The console's other security headers are `console::SECURITY_HEADERS` (HSTS as
/// `STRICT_TRANSPORT_SECURITY`), and the distribution sends them with every
/// response, over HTTPS only, with the single-page app's fallback.
#[test]
fn console_distribution_sends_the_local_security_headers() {
    let template = template();
    let headers = console_security_headers(&template);
    for (name, value) in console::SECURITY_HEADERS {
        match name {
            "strict-transport-security" => {
                let hsts = &headers["StrictTransportSecurity"];
                let directives: Vec<&str> = value.split(';').map(str::trim).collect();
                let max_age = directives[0]
                    .strip_prefix("max-age=")
                    .and_then(|s| s.parse::<i64>().ok())
                    .expect("max-age first");
                assert_eq!(value, console::STRICT_TRANSPORT_SECURITY);
                assert_eq!(hsts["AccessControlMaxAgeSec"].as_i64(), Some(max_age));
                assert_eq!(
                    hsts["IncludeSubdomains"].as_bool().unwrap_or(false),
                    directives.contains(&"includeSubDomains")
                );
                assert_eq!(
                    hsts["Preload"].as_bool().unwrap_or(false),
                    directives.contains(&"preload")
                );
                assert_eq!(hsts["Override"].as_bool(), Some(true));
            }
            "x-content-type-options" => {
                assert_eq!(value, "nosniff", "CloudFront sends only nosniff");
                assert_eq!(
                    headers["ContentTypeOptions"]["Override"].as_bool(),
                    Some(true)
                );
            }
            "referrer-policy" => {
                let policy = &headers["ReferrerPolicy"];
                assert_eq!(policy["ReferrerPolicy"].as_str(), Some(value));
                assert_eq!(policy["Override"].as_bool(), Some(true));
            }
            "x-frame-options" => {
                let frame = &headers["FrameOptions"];
                assert_eq!(frame["FrameOption"].as_str(), Some(value));
                assert_eq!(frame["Override"].as_bool(), Some(true));
            }
            other => panic!("{other}: not in the template's response headers policy"),
        }
    }

    let config = &resource(&template, "ConsoleDistribution")["Properties"]["DistributionConfig"];
    assert_eq!(config["DefaultRootObject"].as_str(), Some("index.html"));
    let behavior = &config["DefaultCacheBehavior"];
    assert_eq!(
        ref_target(&behavior["ResponseHeadersPolicyId"]),
        Some("ConsoleResponseHeadersPolicy")
    );
    assert_eq!(
        behavior["ViewerProtocolPolicy"].as_str(),
        Some("redirect-to-https")
    );
    // Managed policy CachingOptimized.
    assert_eq!(
        behavior["CachePolicyId"].as_str(),
        Some("658327ea-f89d-4fab-a63d-7e88639e58f6")
    );
    assert_eq!(strings(&behavior["AllowedMethods"]), ["GET", "HEAD"]);
    // Only the embeddable importer's script and the assets it loads differ: CORS for
    // any origin (public static files, no credentials), the rest like the default.
    let behaviors = config["CacheBehaviors"]
        .as_sequence()
        .expect("CacheBehaviors");
    let paths: Vec<&str> = behaviors
        .iter()
        .map(|b| b["PathPattern"].as_str().expect("PathPattern"))
        .collect();
    assert_eq!(paths, console::IMPORTER_PATHS);
    for b in behaviors {
        assert_eq!(
            ref_target(&b["ResponseHeadersPolicyId"]),
            Some("ImporterResponseHeadersPolicy")
        );
        for same in [
            "ViewerProtocolPolicy",
            "CachePolicyId",
            "AllowedMethods",
            "TargetOriginId",
        ] {
            assert_eq!(b[same], behavior[same], "{same}");
        }
    }
    let importer = &resource(&template, "ImporterResponseHeadersPolicy")["Properties"]["ResponseHeadersPolicyConfig"];
    let cors = &importer["CorsConfig"];
    assert_eq!(strings(&cors["AccessControlAllowOrigins"]["Items"]), ["*"]);
    assert_eq!(cors["AccessControlAllowCredentials"].as_bool(), Some(false));
    assert_eq!(
        strings(&cors["AccessControlAllowMethods"]["Items"]),
        ["GET", "HEAD"]
    );
    assert_eq!(
        importer["SecurityHeadersConfig"]["ContentTypeOptions"]["Override"].as_bool(),
        Some(true)
    );
    let mut fallbacks: Vec<i64> = config["CustomErrorResponses"]
        .as_sequence()
        .expect("CustomErrorResponses")
        .iter()
        .map(|r| {
            assert_eq!(r["ResponseCode"].as_i64(), Some(200));
            assert_eq!(r["ResponsePagePath"].as_str(), Some("/index.html"));
            r["ErrorCode"].as_i64().unwrap()
        })
        .collect();
    fallbacks.sort();
    assert_eq!(fallbacks, [403, 404]);
}

/// The HTTP API answers CORS for the console origin and the importer's embedding
/// origins only, with exactly the local stack's configuration (`console::CORS_*`),
/// and accepts the console's ID tokens.
#[test]
fn http_api_cors_allows_the_console_and_the_embedding_apps() {
    let template = template();
    let api = &resource(&template, "HttpApi")["Properties"];
    // One !If over the whole configuration (SAM keeps nothing else of an intrinsic
    // one): with embedding apps, and without.
    let branches = match &api["CorsConfiguration"] {
        Value::Tagged(tagged) if tagged.tag == "!If" => tagged.value.as_sequence().unwrap().clone(),
        other => panic!("CorsConfiguration is not an !If: {other:?}"),
    };
    assert_eq!(branches[0].as_str(), Some("HasImporterOrigins"));
    let embedders = ["https://app.example.com", "https://crm.example.org:8443"];
    for (branch, with_embedders) in [(&branches[1], true), (&branches[2], false)] {
        let cors = branch;
        for (scope, origin) in console_origins() {
            let scope = scope
                .when("HasImporterOrigins", with_embedders)
                .with("ImporterOrigins", &embedders.join(","));
            let mut want = vec![origin];
            if with_embedders {
                want.extend(embedders);
            }
            assert_eq!(evaluate(&cors["AllowOrigins"], &scope).list(), want);
        }
        assert_eq!(strings(&cors["AllowMethods"]), console::CORS_ALLOW_METHODS);
        assert_eq!(strings(&cors["AllowHeaders"]), console::CORS_ALLOW_HEADERS);
        assert_eq!(
            strings(&cors["ExposeHeaders"]),
            console::CORS_EXPOSE_HEADERS
        );
        assert_eq!(
            cors["MaxAge"].as_u64(),
            Some(u64::from(console::CORS_MAX_AGE_SECONDS))
        );
        assert_eq!(
            cors["AllowCredentials"].as_bool(),
            Some(console::CORS_ALLOW_CREDENTIALS)
        );
        let fields: Vec<&str> = cors
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(fields.len(), 6, "unexpected CORS fields: {fields:?}");
    }

    // ID tokens' aud is the client id: the console's is accepted too.
    let audience = &api["Auth"]["Authorizers"]["OidcJwt"]["JwtConfiguration"]["audience"];
    let ids = Scope::default()
        .with("UserPoolApiClient", "api-client")
        .with("UserPoolConsoleClient", "console-client")
        .with("OidcConsoleClientId", "external-console")
        .list("OidcAudience", &["external-a", "external-b"]);
    let cognito = Scope { ..ids }.when("CreateUserPool", true);
    assert_eq!(
        evaluate(audience, &cognito).list(),
        ["api-client", "console-client"]
    );
    let external = Scope {
        conditions: HashMap::from([
            ("CreateUserPool".into(), false),
            ("ExternalConsoleClient".into(), true),
        ]),
        ..cognito
    };
    assert_eq!(
        evaluate(audience, &external).list(),
        ["external-a", "external-b", "external-console"]
    );
    let without = Scope {
        conditions: HashMap::from([
            ("CreateUserPool".into(), false),
            ("ExternalConsoleClient".into(), false),
        ]),
        ..external
    };
    assert_eq!(
        evaluate(audience, &without).list(),
        ["external-a", "external-b"]
    );
}

/// The imports bucket takes the console's (and embedded importers') presigned PUTs:
/// its one CORS rule allows their origins with exactly `console::UPLOAD_CORS_*`.
#[test]
fn imports_bucket_cors_is_the_console_upload_rule() {
    let template = template();
    let rules =
        resource(&template, "ImportsBucket")["Properties"]["CorsConfiguration"]["CorsRules"]
            .as_sequence()
            .expect("ImportsBucket CorsRules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_the_console_and_importer_origins(
        "ImportsBucket AllowedOrigins",
        &rule["AllowedOrigins"],
    );
    assert_eq!(
        strings(&rule["AllowedMethods"]),
        console::UPLOAD_CORS_ALLOWED_METHODS
    );
    assert_eq!(
        strings(&rule["AllowedHeaders"]),
        console::UPLOAD_CORS_ALLOWED_HEADERS
    );
    assert_eq!(
        strings(&rule["ExposedHeaders"]),
        console::UPLOAD_CORS_EXPOSED_HEADERS
    );
    assert_eq!(
        rule["MaxAge"].as_i64(),
        Some(i64::from(console::UPLOAD_CORS_MAX_AGE_SECONDS))
    );
}

/// Security: the console's app client is public (a browser keeps no secret) and
/// signs in only with the authorization code flow (PKCE, oidc-client-ts), returning
/// only to the console: `<origin>` + `console::REDIRECT_PATH`.
#[test]
fn console_client_is_public_code_flow_back_to_the_console() {
    let template = template();
    let client = resource(&template, "UserPoolConsoleClient");
    assert_eq!(client["Condition"].as_str(), Some("CreateUserPool"));
    assert_eq!(
        resource(&template, "UserPoolDomain")["Condition"].as_str(),
        Some("CreateUserPool")
    );
    let props = &client["Properties"];
    assert_eq!(ref_target(&props["UserPoolId"]), Some("UserPool"));
    assert_eq!(props["GenerateSecret"].as_bool(), Some(false));
    assert_eq!(
        props["AllowedOAuthFlowsUserPoolClient"].as_bool(),
        Some(true)
    );
    assert_eq!(strings(&props["AllowedOAuthFlows"]), ["code"]);
    let scopes = strings(&props["AllowedOAuthScopes"]);
    assert!(scopes.contains(&"openid"), "{scopes:?}");
    assert!(
        scopes
            .iter()
            .all(|s| ["openid", "email", "profile"].contains(s)),
        "{scopes:?}"
    );
    assert_eq!(strings(&props["SupportedIdentityProviders"]), ["COGNITO"]);
    assert_eq!(
        props["PreventUserExistenceErrors"].as_str(),
        Some("ENABLED")
    );
    for flow in strings(&props["ExplicitAuthFlows"]) {
        assert_eq!(
            flow, "ALLOW_REFRESH_TOKEN_AUTH",
            "no password flows from a browser"
        );
    }
    for (scope, origin) in console_origins() {
        assert_eq!(
            evaluate(&props["CallbackURLs"], &scope).list(),
            [format!("{origin}{}", console::REDIRECT_PATH)]
        );
        for url in evaluate(&props["LogoutURLs"], &scope).list() {
            assert!(url.starts_with(&format!("{origin}/")), "{url}");
        }
    }
    // Short-lived tokens (minutes).
    let units = &props["TokenValidityUnits"];
    for (validity, unit) in [
        ("IdTokenValidity", "IdToken"),
        ("AccessTokenValidity", "AccessToken"),
        ("RefreshTokenValidity", "RefreshToken"),
    ] {
        assert_eq!(units[unit].as_str(), Some("minutes"), "{unit}");
        assert!(props[validity].as_i64().unwrap() <= 60, "{validity}");
    }
}

/// Security: the console bucket is private; only the stack's distribution reads it,
/// through origin access control (no public access, no website endpoint).
#[test]
fn console_bucket_is_private_and_read_only_by_the_distribution() {
    let template = template();
    let props = &resource(&template, "ConsoleBucket")["Properties"];
    for flag in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(
            props["PublicAccessBlockConfiguration"][flag].as_bool(),
            Some(true),
            "{flag}"
        );
    }
    assert_eq!(
        props["OwnershipControls"]["Rules"][0]["ObjectOwnership"].as_str(),
        Some("BucketOwnerEnforced")
    );
    assert!(
        props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            ["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
            .as_str()
            .is_some()
    );
    for public in ["WebsiteConfiguration", "AccessControl", "CorsConfiguration"] {
        assert!(props.get(public).is_none(), "ConsoleBucket has {public}");
    }

    let policy = &resource(&template, "ConsoleBucketPolicy")["Properties"];
    assert_eq!(ref_target(&policy["Bucket"]), Some("ConsoleBucket"));
    let statements = policy["PolicyDocument"]["Statement"].as_sequence().unwrap();
    assert!(
        statements
            .iter()
            .any(|s| s["Effect"].as_str() == Some("Deny")
                && s["Condition"]["Bool"]["aws:SecureTransport"].as_str() == Some("false"))
    );
    let allows: Vec<&Value> = statements
        .iter()
        .filter(|s| s["Effect"].as_str() != Some("Deny"))
        .collect();
    assert_eq!(allows.len(), 1, "one reader");
    let allow = allows[0];
    let principal = allow["Principal"]
        .as_mapping()
        .expect("a service principal");
    assert_eq!(principal.len(), 1);
    assert_eq!(
        allow["Principal"]["Service"].as_str(),
        Some("cloudfront.amazonaws.com")
    );
    assert_eq!(allow["Action"].as_str(), Some("s3:GetObject"));
    let source = evaluate(
        &allow["Condition"]["StringEquals"]["AWS:SourceArn"],
        &Scope::standard().with("ConsoleDistribution", "EDFDVBD6EXAMPLE"),
    )
    .text();
    assert_eq!(
        source,
        "arn:aws:cloudfront::123456789012:distribution/EDFDVBD6EXAMPLE"
    );

    let origins =
        resource(&template, "ConsoleDistribution")["Properties"]["DistributionConfig"]["Origins"]
            .as_sequence()
            .unwrap();
    assert_eq!(origins.len(), 1);
    let origin = &origins[0];
    assert_eq!(
        format!("{:?}", origin["DomainName"]),
        format!(
            "{:?}",
            serde_yaml::from_str::<Value>("!GetAtt ConsoleBucket.RegionalDomainName").unwrap()
        )
    );
    assert!(
        format!("{:?}", origin["OriginAccessControlId"]).contains("ConsoleOriginAccessControl.Id")
    );
    assert_eq!(
        origin["S3OriginConfig"]["OriginAccessIdentity"].as_str(),
        Some(""),
        "OAC, not a legacy origin access identity"
    );
    let oac = &resource(&template, "ConsoleOriginAccessControl")["Properties"]["OriginAccessControlConfig"];
    assert_eq!(oac["OriginAccessControlOriginType"].as_str(), Some("s3"));
    assert_eq!(oac["SigningBehavior"].as_str(), Some("always"));
    assert_eq!(oac["SigningProtocol"].as_str(), Some("sigv4"));
}

/// `make console-deploy` writes config.json from the stack's outputs: each exists.
#[test]
fn console_outputs_feed_console_deploy() {
    let template = template();
    let makefile =
        std::fs::read_to_string(custody_local::template_path().with_file_name("Makefile"))
            .expect("Makefile");
    let target = makefile
        .split("\nconsole-deploy:")
        .nth(1)
        .expect("a console-deploy target");
    for output in [
        "ConsoleUrl",
        "ConsoleBucketName",
        "ConsoleDistributionId",
        "ConsoleClientId",
        "ConsoleApiUrl",
        "OidcAuthority",
    ] {
        assert!(
            template["Outputs"].get(output).is_some(),
            "no output {output}"
        );
        assert!(
            target.contains(output),
            "console-deploy does not read {output}"
        );
    }
}

/// Security: only the published key and the routes that authenticate themselves skip
/// the JWT authorizer (provider callbacks and webhooks, and the embedded importer's `/embed/imports…`,
/// which the import function checks against an import session), and the import role
/// may reach the session records, which are found by the token's id, not a tenant
/// (IAM's `dynamodb:LeadingKeys`: the emulator does not enforce it, AWS does).
#[test]
fn unauthenticated_routes_are_the_self_checked_ones() {
    let template = template();
    let mut open = Vec::new();
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for (_, event) in events {
            if event["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let props = &event["Properties"];
            if props["Auth"]["Authorizer"].as_str() == Some("NONE") {
                open.push(format!(
                    "{} {} {}",
                    name.as_str().unwrap(),
                    props["Method"].as_str().unwrap(),
                    props["Path"].as_str().unwrap()
                ));
            }
        }
    }
    open.sort();
    assert_eq!(
        open,
        [
            // Public by design: anyone verifies a certificate of deletion with it.
            "DsarApiFunction GET /privacy/public-key",
            "ImportFunction GET /embed/imports/{id}",
            "ImportFunction POST /embed/imports",
            "ImportFunction POST /embed/imports/{id}/complete",
            "ImportFunction POST /embed/imports/{id}/rows",
            "OauthFunction GET /oauth/{provider}/callback",
            "OauthFunction POST /webhooks/highlevel",
        ]
    );
    let statements =
        resource(&template, "ImportFunction")["Properties"]["Policies"][0]["Statement"]
            .as_sequence()
            .expect("ImportFunction statements");
    let items = statements
        .iter()
        .find(|s| s["Sid"].as_str() == Some("TenantItems"))
        .expect("TenantItems");
    let leading = strings(&items["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]);
    let session = format!("{}*", custody::import_session::KEY_PREFIX);
    assert!(leading.contains(&session.as_str()), "{leading:?}");
    assert!(
        leading.iter().all(|k| *k == "T#*" || *k == session),
        "{leading:?}"
    );
}

/// Privacy notices by e-mail are optional: `NoticeEmailSender` empty by default, and
/// only when it is set does the dsar function get a policy, for `ses:SendEmail` from
/// that sender's identity alone; no other function may send e-mail.
#[test]
fn notice_email_is_optional_and_limited_to_the_sender() {
    let template = template();
    let parameter = &template["Parameters"]["NoticeEmailSender"];
    assert_eq!(parameter["Default"].as_str(), Some(""));
    assert!(parameter["AllowedPattern"].as_str().is_some());
    assert!(template["Conditions"].get("SendNoticeEmail").is_some());
    let policy = resource(&template, "DsarNoticeEmailPolicy");
    assert_eq!(policy["Condition"].as_str(), Some("SendNoticeEmail"));
    let roles = format!("{:?}", policy["Properties"]["Roles"]);
    assert!(roles.contains("DsarFunctionRole"), "{roles}");
    // The routes send notices of filing too.
    assert!(roles.contains("DsarApiFunctionRole"), "{roles}");
    let statements = policy["Properties"]["PolicyDocument"]["Statement"]
        .as_sequence()
        .unwrap();
    assert_eq!(statements.len(), 1);
    let statement = &statements[0];
    assert_eq!(statement["Action"].as_str(), Some("ses:SendEmail"));
    let resource_text = format!("{:?}", statement["Resource"]);
    assert!(
        resource_text.contains("identity/${NoticeEmailSender}") && !resource_text.contains('*'),
        "{resource_text}"
    );
    assert!(
        format!(
            "{:?}",
            statement["Condition"]["StringEquals"]["ses:FromAddress"]
        )
        .contains("NoticeEmailSender")
    );
    for function in ["DsarFunction", "DsarApiFunction"] {
        let env = &resource(&template, function)["Properties"]["Environment"]["Variables"];
        assert!(
            format!("{:?}", env["CUSTODY_NOTICE_EMAIL_SENDER"]).contains("NoticeEmailSender"),
            "{function}"
        );
    }
    // No function's own policies mention SES.
    for (logical, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() == Some("AWS::Serverless::Function") {
            let policies = format!("{:?}", resource["Properties"]["Policies"]);
            assert!(!policies.contains("ses:"), "{logical:?} may send e-mail");
        }
    }
}

/// Every sealing purpose a function's code names (`Purpose::…` in its crate and the
/// function crates it builds on) is one its role may use the data key for: moto does
/// not enforce IAM, so a purpose missing from the policy would fail only in AWS.
#[test]
fn each_function_may_seal_the_purposes_its_code_names() {
    let template = template();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fn sources(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut checked = 0;
    for (logical, res) in template["Resources"].as_mapping().unwrap() {
        if res["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = res["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap();
        let crate_dir = root.join("functions").join(binary);
        let mut code = String::new();
        sources(&crate_dir.join("src"), &mut code);
        // Function crates it depends on by path (dsar-api runs the dsar crate's routes).
        let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
        for line in manifest.lines() {
            if let Some(rest) = line.split("path = \"../").nth(1) {
                let dep = rest.split('"').next().unwrap();
                sources(&root.join("functions").join(dep).join("src"), &mut code);
            }
        }
        let named: std::collections::BTreeSet<&'static str> = code
            .split("Purpose::")
            .skip(1)
            .filter_map(|rest| {
                let variant: String = rest
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                let mut snake = String::new();
                for (i, c) in variant.chars().enumerate() {
                    if c.is_ascii_uppercase() && i > 0 {
                        snake.push('_');
                    }
                    snake.push(c.to_ascii_lowercase());
                }
                serde_json::from_value::<custody::seal::Purpose>(serde_json::json!(snake))
                    .ok()
                    .map(custody::seal::Purpose::as_str)
            })
            .collect();
        let mut allowed = Vec::new();
        for policy in res["Properties"]["Policies"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            for statement in policy["Statement"].as_sequence().into_iter().flatten() {
                let purposes = &statement["Condition"]["StringEquals"]["kms:EncryptionContext:custody:purpose"];
                match purposes {
                    Value::String(one) => allowed.push(one.clone()),
                    Value::Sequence(many) => {
                        allowed.extend(many.iter().filter_map(|p| p.as_str().map(str::to_owned)))
                    }
                    _ => {}
                }
            }
        }
        for purpose in &named {
            assert!(
                allowed.iter().any(|a| a == purpose),
                "{logical:?} names Purpose {purpose} but its role may not use the data key for it ({allowed:?})"
            );
        }
        checked += named.len();
    }
    // dsar and dsar-api: webhook_secret, rectification_values; export: destination_password.
    assert!(
        checked >= 5,
        "only {checked} purposes found in the functions' code"
    );
}
