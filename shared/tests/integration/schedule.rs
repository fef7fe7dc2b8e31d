use custody::TenantId;
use custody::schedule::{ExportSchedules, ScheduleSpec};
use custody_local::harness::TestStack;

fn spec(expression: &str) -> ScheduleSpec {
    ScheduleSpec {
        expression: expression.to_owned(),
        timezone: "Europe/Berlin".to_owned(),
        target_arn: "arn:aws:lambda:us-east-1:123456789012:function:export".to_owned(),
        role_arn: "arn:aws:iam::123456789012:role/custody-scheduler".to_owned(),
        dead_letter_arn: "arn:aws:sqs:us-east-1:123456789012:custody-export-failures".to_owned(),
    }
}

#[tokio::test]
async fn upsert_get_and_idempotent_delete() {
    let stack = TestStack::new().await;
    let schedules = stack.schedules();
    let acme = TenantId::parse("acme").unwrap();
    assert!(schedules.get(&acme).await.unwrap().is_none());
    schedules.upsert(&acme, &spec("rate(1 day)")).await.unwrap();
    schedules
        .upsert(&acme, &spec("cron(0 3 * * ? *)"))
        .await
        .unwrap();
    let info = schedules.get(&acme).await.unwrap().unwrap();
    assert_eq!(info.expression, "cron(0 3 * * ? *)");
    assert_eq!(info.timezone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(ExportSchedules::name(&acme), "export-acme");
    // What Scheduler holds: bounded retries, then the dead-letter queue.
    let stored = stack
        .clients
        .scheduler
        .get_schedule()
        .name("export-acme")
        .group_name(stack.config.schedule_group.clone())
        .send()
        .await
        .unwrap();
    let target = stored.target().unwrap();
    assert_eq!(
        target.dead_letter_config().and_then(|d| d.arn()),
        Some(spec("rate(1 day)").dead_letter_arn.as_str())
    );
    assert_eq!(
        target
            .retry_policy()
            .and_then(|r| r.maximum_retry_attempts()),
        Some(custody::schedule::RETRY_ATTEMPTS)
    );
    assert!(schedules.delete(&acme).await.unwrap());
    assert!(
        !schedules.delete(&acme).await.unwrap(),
        "a second delete is not an error"
    );
    assert!(schedules.get(&acme).await.unwrap().is_none());
}
