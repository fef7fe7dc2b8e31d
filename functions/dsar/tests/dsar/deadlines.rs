//! The daily deadline check on the manual clock: overdue requests and stuck purges
//! are counted, on-time and finished ones are not; the schedule's event is told apart
//! from the function's other events by its shape.

use chrono::Duration;
use dsar::deadlines::{self, DeadlineCheck, DeadlineReport};
use serde_json::Value;

use crate::*;

#[tokio::test]
async fn overdue_requests_and_stuck_purges_are_counted_and_on_time_ones_are_not() {
    let Env { deps, clock, .. } = env().await;
    let globex = TenantId::parse("globex").unwrap();
    let initech = TenantId::parse("initech").unwrap();

    // Day 0: two requests of acme; the second is answered at once. A purge of globex
    // starts and never runs (no stream in this test).
    let late = file_request(&deps, "export", &ANN, "gdpr").await;
    let answered = file_request(&deps, "export", &BOB, "gdpr").await;
    deliver(&deps, &answered).await;
    dsar::account::start(&deps, &globex, "user:admin-globex")
        .await
        .unwrap();

    // Nothing is late on day 0.
    assert_eq!(
        deadlines::check(&deps).await.unwrap(),
        DeadlineReport {
            requests_overdue: 0,
            purges_stuck: 0,
            open_requests: 1,
            running_purges: 1,
        }
    );

    // Day 40: the open GDPR request is past the product's 30 days and the regulation's
    // month; the purge is past its day. A request and a purge filed today are on time.
    clock.advance(Duration::days(40));
    let fresh = file_request(&deps, "delete", &ANN, "ccpa").await;
    dsar::account::start(&deps, &initech, "user:admin-initech")
        .await
        .unwrap();
    let report = deadlines::check(&deps).await.unwrap();
    assert_eq!(
        report,
        DeadlineReport {
            requests_overdue: 1,
            purges_stuck: 1,
            open_requests: 2,
            running_purges: 2,
        },
        "late {late}, answered {answered}, fresh {fresh}"
    );

    // A purge just inside its day is not stuck; just past it, it is.
    clock.advance(deadlines::PURGE_TIME - Duration::minutes(1));
    assert_eq!(deadlines::check(&deps).await.unwrap().purges_stuck, 1);
    clock.advance(Duration::minutes(2));
    assert_eq!(deadlines::check(&deps).await.unwrap().purges_stuck, 2);
}

#[test]
fn the_schedule_event_is_told_apart_by_its_shape() {
    let check: Value = serde_json::from_str(worker_event!("schedule_deadline_check")).unwrap();
    assert!(DeadlineCheck::matches(&check));
    for other in [
        worker_event!("stream_request_pending"),
        event!("post_privacy_export"),
        event!("delete_account"),
    ] {
        let other: Value = serde_json::from_str(other).unwrap();
        assert!(!DeadlineCheck::matches(&other));
    }
    assert!(!DeadlineCheck::matches(
        &serde_json::json!({"check": "something-else"})
    ));
}

#[test]
fn the_template_schedules_the_check_daily_with_that_shape() {
    let template =
        custody_local::provision::load_template(&custody_local::template_path()).unwrap();
    let schedule = &template["Resources"]["DsarFunction"]["Properties"]["Events"]["DeadlineCheck"];
    assert_eq!(schedule["Type"].as_str(), Some("Schedule"));
    // Once a day: a fixed minute and hour, every day.
    let expression = schedule["Properties"]["Schedule"].as_str().unwrap();
    assert!(
        expression.starts_with("cron(") && expression.ends_with(" * * ? *)"),
        "{expression}"
    );
    let input: Value =
        serde_json::from_str(schedule["Properties"]["Input"].as_str().unwrap()).unwrap();
    assert!(DeadlineCheck::matches(&input));
    let file: Value = serde_json::from_str(worker_event!("schedule_deadline_check")).unwrap();
    assert_eq!(input, file);
}
