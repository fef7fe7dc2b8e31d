use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use custody::TenantId;
use custody::audit::{AuditLog, ChainBreak, Event, Outcome};
use custody_local::harness::TestStack;

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn event(i: usize) -> Event {
    Event::new(
        format!("user-{}", i % 3),
        "export.completed",
        format!("RUN#{i:04}"),
    )
    .subject(format!("ps_{i:064x}"))
    .detail("messages", i as u64)
}

async fn chain_of(log: &AuditLog, n: usize) {
    for i in 0..n {
        log.append(&acme(), event(i)).await.unwrap();
    }
}

fn key(seq: u64) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("tenant".to_owned(), AttributeValue::S("acme".into())),
        ("seq".to_owned(), AttributeValue::N(seq.to_string())),
    ])
}

async fn raw_get(stack: &TestStack, seq: u64) -> HashMap<String, AttributeValue> {
    stack
        .clients
        .dynamodb
        .get_item()
        .table_name(&stack.config.audit_table)
        .set_key(Some(key(seq)))
        .send()
        .await
        .unwrap()
        .item
        .unwrap()
}

async fn raw_put(stack: &TestStack, item: HashMap<String, AttributeValue>) {
    stack
        .clients
        .dynamodb
        .put_item()
        .table_name(&stack.config.audit_table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_1000_verifies_and_every_tampering_is_detected() {
    let stack = TestStack::new().await;
    let log = stack.audit(TestStack::system_clock());
    chain_of(&log, 1000).await;
    let verified = log.verify(&acme()).await.unwrap().unwrap();
    assert_eq!(verified.entries, 1000);

    // Altering any one field of entry 500 is detected, and restoring it heals the chain.
    let original = raw_get(&stack, 500).await;
    let alterations: Vec<(&str, AttributeValue)> = vec![
        ("at", AttributeValue::S("2020-01-01T00:00:00.000Z".into())),
        ("actor", AttributeValue::S("someone-else".into())),
        ("action", AttributeValue::S("export.deleted".into())),
        ("target", AttributeValue::S("RUN#9999".into())),
        ("subject", AttributeValue::S("ps_other".into())),
        ("outcome", AttributeValue::S("failure".into())),
        ("details", AttributeValue::S("{\"messages\":1}".into())),
        ("prev_hash", AttributeValue::S("ab".repeat(32))),
        ("hash", AttributeValue::S("cd".repeat(32))),
    ];
    for (field, value) in alterations {
        assert!(original.contains_key(field), "entry has field {field}");
        let mut altered = original.clone();
        altered.insert(field.to_owned(), value);
        raw_put(&stack, altered).await;
        let result = log.verify(&acme()).await.unwrap();
        assert_eq!(
            result,
            Err(ChainBreak::Altered { seq: 500 }),
            "altered {field}"
        );
        raw_put(&stack, original.clone()).await;
    }
    assert!(log.verify(&acme()).await.unwrap().is_ok());

    // A forger who also recomputes the altered entry's hash breaks the next link.
    let mut entries = log.entries(&acme(), None, None).await.unwrap();
    let mut forged = entries[499].clone();
    forged.actor = "forger".into();
    forged.hash = forged.compute_hash();
    raw_put(&stack, serde_dynamo::to_item(&forged).unwrap()).await;
    assert_eq!(
        log.verify(&acme()).await.unwrap(),
        Err(ChainBreak::Unlinked { seq: 501 })
    );
    raw_put(&stack, original.clone()).await;

    // Swapping two entries' contents is detected.
    let a = raw_get(&stack, 10).await;
    let b = raw_get(&stack, 11).await;
    let mut a_at_11 = a.clone();
    a_at_11.insert("seq".into(), AttributeValue::N("11".into()));
    let mut b_at_10 = b.clone();
    b_at_10.insert("seq".into(), AttributeValue::N("10".into()));
    raw_put(&stack, b_at_10).await;
    raw_put(&stack, a_at_11).await;
    assert!(matches!(
        log.verify(&acme()).await.unwrap(),
        Err(ChainBreak::Altered { seq: 10 })
    ));
    raw_put(&stack, a).await;
    raw_put(&stack, b).await;
    assert!(log.verify(&acme()).await.unwrap().is_ok());

    // Deleting one entry is detected.
    stack
        .clients
        .dynamodb
        .delete_item()
        .table_name(&stack.config.audit_table)
        .set_key(Some(key(700)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        log.verify(&acme()).await.unwrap(),
        Err(ChainBreak::Gap {
            expected: 700,
            found: 701
        })
    );

    // Entries keep their order in memory, too: a swapped list fails the pure verifier.
    entries.swap(3, 4);
    assert!(custody::audit::verify_chain(&acme(), &entries).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_leave_one_unbroken_chain() {
    let stack = TestStack::new().await;
    let log = stack.audit(TestStack::system_clock());
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    log.append(
                        &acme(),
                        Event::new(format!("writer-{w}"), "test.append", format!("N#{i}")),
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let verified = log.verify(&acme()).await.unwrap().unwrap();
    assert_eq!(verified.entries, 80);
}

#[tokio::test]
async fn tenants_have_separate_chains_and_time_queries_filter() {
    let stack = TestStack::new().await;
    let clock = custody::clock::ManualClock::at(chrono::Utc::now());
    let log = stack.audit(std::sync::Arc::new(clock.clone()));
    let globex = TenantId::parse("globex").unwrap();
    log.append(&acme(), event(1)).await.unwrap();
    let cut = custody::clock::Clock::now(&clock);
    clock.advance(chrono::Duration::hours(1));
    log.append(&acme(), event(2).outcome(Outcome::Failure))
        .await
        .unwrap();
    log.append(&globex, event(3)).await.unwrap();
    assert_eq!(log.verify(&acme()).await.unwrap().unwrap().entries, 2);
    assert_eq!(log.verify(&globex).await.unwrap().unwrap().entries, 1);
    let later = log
        .entries(&acme(), Some(cut + chrono::Duration::minutes(1)), None)
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].outcome, Outcome::Failure);
}
