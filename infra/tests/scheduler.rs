//! The local EventBridge Scheduler fires what is created in the emulator: a one-time
//! `at()` schedule within seconds (then deleted, `ActionAfterCompletion: DELETE`), and
//! a target it cannot deliver to lands in the schedule's dead-letter queue.

use std::time::{Duration, Instant};

use aws_sdk_scheduler::types::{
    ActionAfterCompletion, DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode,
    RetryPolicy, Target,
};
use custody_local::scheduler::{Firing, Outcome};
use custody_local::stack::{LocalStack, StackOptions};

async fn stack() -> LocalStack {
    custody_local::harness::build_binaries();
    LocalStack::start(StackOptions::new(custody_local::harness::unique_stage()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn fired(stack: &LocalStack, name: &str, limit: Duration) -> Firing {
    let until = Instant::now() + limit;
    loop {
        if let Some(f) = stack
            .schedules
            .all()
            .into_iter()
            .find(|f| f.schedule == name)
        {
            return f;
        }
        assert!(
            Instant::now() < until,
            "{name} did not fire within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn at(after: Duration) -> String {
    let when = chrono::Utc::now() + chrono::Duration::from_std(after).unwrap();
    format!("at({})", when.format("%Y-%m-%dT%H:%M:%S"))
}

fn window() -> FlexibleTimeWindow {
    FlexibleTimeWindow::builder()
        .mode(FlexibleTimeWindowMode::Off)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_schedule_fires_within_seconds_and_is_deleted() {
    let stack = stack().await;
    let group = stack.provisioned.config.schedule_group.clone();
    // The ARN the export function's own kicks name (its FunctionName).
    let arn = format!(
        "arn:aws:lambda:us-east-1:123456789012:function:custody-export-{}",
        stack.provisioned.stage
    );
    let target = Target::builder()
        .arn(arn)
        .role_arn("arn:aws:iam::123456789012:role/scheduler")
        .input(r#"{"tenant_id": "nobody", "kick": true, "at": "<aws.scheduler.scheduled-time>"}"#)
        .build()
        .unwrap();
    let created = Instant::now();
    stack
        .clients
        .scheduler
        .create_schedule()
        .name("export-kick-test")
        .group_name(&group)
        .schedule_expression(at(Duration::from_secs(2)))
        .schedule_expression_timezone("UTC")
        .action_after_completion(ActionAfterCompletion::Delete)
        .flexible_time_window(window())
        .target(target)
        .send()
        .await
        .unwrap();
    let firing = fired(&stack, "export-kick-test", Duration::from_secs(15)).await;
    let took = created.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "fired before its time ({took:?})"
    );
    assert!(
        took < Duration::from_secs(8),
        "fired {took:?} after creation"
    );
    assert_eq!(firing.function.as_deref(), Some("export"));
    assert!(
        matches!(firing.outcome, Outcome::Completed { attempt: 1 }),
        "{firing:?}"
    );
    // ActionAfterCompletion: DELETE.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let got = stack
            .clients
            .scheduler
            .get_schedule()
            .name("export-kick-test")
            .group_name(&group)
            .send()
            .await;
        if got.is_err_and(|e| {
            e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception())
        }) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the completed schedule was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It fired once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = stack
        .schedules
        .all()
        .iter()
        .filter(|f| f.schedule == "export-kick-test")
        .count();
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_target_goes_to_the_dead_letter_queue() {
    let stack = stack().await;
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    let queue = format!("scheduler-dlq-{}", stack.provisioned.stage);
    let url = sqs
        .create_queue()
        .queue_name(&queue)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = format!("arn:aws:sqs:us-east-1:123456789012:{queue}");
    let target = Target::builder()
        .arn("arn:aws:lambda:us-east-1:123456789012:function:no-such-function")
        .role_arn("arn:aws:iam::123456789012:role/scheduler")
        .input(r#"{"tenant_id": "t1", "at": "<aws.scheduler.scheduled-time>"}"#)
        .retry_policy(RetryPolicy::builder().maximum_retry_attempts(1).build())
        .dead_letter_config(DeadLetterConfig::builder().arn(&queue_arn).build())
        .build()
        .unwrap();
    stack
        .clients
        .scheduler
        .create_schedule()
        .name("undeliverable")
        .group_name(&stack.provisioned.config.schedule_group)
        .schedule_expression(at(Duration::from_secs(1)))
        .flexible_time_window(window())
        .target(target)
        .send()
        .await
        .unwrap();
    let firing = fired(&stack, "undeliverable", Duration::from_secs(15)).await;
    assert_eq!(
        firing.outcome,
        Outcome::DeadLettered {
            queue_arn: queue_arn.clone()
        }
    );
    let messages = sqs
        .receive_message()
        .queue_url(url)
        .message_attribute_names("All")
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    let message = &messages.messages()[0];
    let body: serde_json::Value = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(body["tenant_id"], "t1");
    assert_eq!(body["at"].as_str(), Some(firing.scheduled_time.as_str()));
    let attributes = message.message_attributes().unwrap();
    assert_eq!(
        attributes["ERROR_CODE"].string_value(),
        Some("TargetNotFound")
    );
}
