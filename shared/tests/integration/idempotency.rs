use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use custody::TenantId;
use custody::clock::ManualClock;
use custody::idempotency::{Idempotency, IdempotencyError, Outcome, RunError};
use custody_local::harness::TestStack;

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

type Result = std::result::Result<Outcome<u32>, RunError<std::io::Error>>;

async fn counted(
    idem: &Idempotency,
    key: &str,
    payload: &str,
    counter: &AtomicUsize,
    pause: Duration,
) -> Result {
    idem.run(&acme(), key, &payload, Duration::from_secs(30), || async {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(pause).await;
        Ok(42 + n as u32)
    })
    .await
}

#[tokio::test]
async fn the_same_key_twice_runs_once() {
    let stack = TestStack::new().await;
    let idem = Idempotency::new(stack.store(TestStack::system_clock()));
    let counter = AtomicUsize::new(0);
    let first = counted(&idem, "s3:bucket/key@v1", "event", &counter, Duration::ZERO)
        .await
        .unwrap();
    let second = counted(&idem, "s3:bucket/key@v1", "event", &counter, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first, Outcome::Ran(42));
    assert_eq!(
        second,
        Outcome::Replayed(42),
        "the stored result is returned"
    );
    assert_eq!(counter.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_claims_run_the_work_once() {
    let stack = TestStack::new().await;
    let idem = Arc::new(Idempotency::new(stack.store(TestStack::system_clock())));
    let counter = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let idem = idem.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                counted(
                    &idem,
                    "stream:seq-1",
                    "event",
                    &counter,
                    Duration::from_millis(300),
                )
                .await
            })
        })
        .collect();
    let mut ran = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Outcome::Ran(_)) => ran += 1,
            Ok(Outcome::Replayed(value)) => assert_eq!(value, 42),
            Err(RunError::Idempotency(IdempotencyError::InProgress)) => {}
            Err(other) => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(ran, 1);
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    // After completion every duplicate gets the result.
    let late = counted(&idem, "stream:seq-1", "event", &counter, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(late, Outcome::Replayed(42));
}

#[tokio::test]
async fn an_abandoned_claim_is_taken_over_after_its_expiry() {
    let stack = TestStack::new().await;
    let clock = ManualClock::at(Utc::now());
    let idem = Idempotency::new(stack.store(Arc::new(clock.clone())));
    let counter = AtomicUsize::new(0);

    // An invocation claims the key with 5 s left, then dies mid-work.
    let tenant = acme();
    let crashed = idem.run(&tenant, "k", &"p", Duration::from_secs(5), || async {
        std::future::pending::<std::result::Result<u32, std::io::Error>>().await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), crashed)
            .await
            .is_err()
    );

    // A retry before the in-progress expiry is refused...
    let early = idem
        .run(&acme(), "k", &"p", Duration::from_secs(5), || async {
            Ok::<u32, std::io::Error>(1)
        })
        .await;
    assert!(matches!(
        early,
        Err(RunError::Idempotency(IdempotencyError::InProgress))
    ));

    // ...and one after it takes the claim over and runs.
    clock.advance(chrono::Duration::seconds(6));
    let late = counted(&idem, "k", "p", &counter, Duration::ZERO)
        .await
        .unwrap();
    assert!(late.ran());
    assert_eq!(counter.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn zero_remaining_time_never_leaves_a_claim_without_expiry() {
    let stack = TestStack::new().await;
    let clock = ManualClock::at(Utc::now());
    let idem = Idempotency::new(stack.store(Arc::new(clock.clone())));
    let tenant = acme();
    let crashed = idem.run(&tenant, "z", &"p", Duration::ZERO, || async {
        std::future::pending::<std::result::Result<u32, std::io::Error>>().await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), crashed)
            .await
            .is_err()
    );
    // Zero is not "expired at once": the claim holds for the longest invocation...
    let early = idem
        .run(&acme(), "z", &"p", Duration::ZERO, || async {
            Ok::<u32, std::io::Error>(1)
        })
        .await;
    assert!(matches!(
        early,
        Err(RunError::Idempotency(IdempotencyError::InProgress))
    ));
    // ...and is not stuck forever.
    clock.advance(chrono::Duration::seconds(901));
    let late = idem
        .run(&acme(), "z", &"p", Duration::ZERO, || async {
            Ok::<u32, std::io::Error>(1)
        })
        .await
        .unwrap();
    assert!(late.ran());
}

#[tokio::test]
async fn a_different_payload_under_the_same_key_is_refused_even_after_completion() {
    let stack = TestStack::new().await;
    let idem = Idempotency::new(stack.store(TestStack::system_clock()));
    let counter = AtomicUsize::new(0);
    counted(&idem, "k", "payload-a", &counter, Duration::ZERO)
        .await
        .unwrap();
    let other = counted(&idem, "k", "payload-b", &counter, Duration::ZERO).await;
    assert!(matches!(
        other,
        Err(RunError::Idempotency(IdempotencyError::PayloadMismatch))
    ));
    assert_eq!(counter.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failure_releases_the_claim_for_a_retry() {
    let stack = TestStack::new().await;
    let idem = Idempotency::new(stack.store(TestStack::system_clock()));
    let failed = idem
        .run(&acme(), "f", &"p", Duration::from_secs(30), || async {
            Err::<u32, _>(std::io::Error::other("destination down"))
        })
        .await;
    assert!(matches!(failed, Err(RunError::Work(_))));
    let retried = idem
        .run(&acme(), "f", &"p", Duration::from_secs(30), || async {
            Ok::<u32, std::io::Error>(7)
        })
        .await
        .unwrap();
    assert_eq!(retried, Outcome::Ran(7));
}

#[tokio::test]
async fn a_completed_record_past_its_expiry_runs_again() {
    let stack = TestStack::new().await;
    let clock = ManualClock::at(Utc::now());
    let idem = Idempotency::new(stack.store(Arc::new(clock.clone())));
    let counter = AtomicUsize::new(0);
    counted(&idem, "k", "p", &counter, Duration::ZERO)
        .await
        .unwrap();
    clock.advance(chrono::Duration::days(2));
    let again = counted(&idem, "k", "p", &counter, Duration::ZERO)
        .await
        .unwrap();
    assert!(again.ran(), "expiry is checked on read, not left to TTL");
}
