use chrono::{Duration, TimeZone, Utc};
use custody::TenantId;
use custody::clock::ManualClock;
use custody::store::{Entity, Key, PageRequest, StoreError, keys};
use custody_local::harness::TestStack;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Run {
    tenant: TenantId,
    id: String,
    messages: u32,
    expires_at: Option<i64>,
    subject: Option<String>,
}

impl Entity for Run {
    const KIND: &'static str = "test-run";
    fn key(&self) -> Key {
        Key::new(keys::tenant(&self.tenant), keys::export_run(&self.id))
    }
    fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }
    fn subject_index(&self) -> Option<(String, String)> {
        self.subject
            .as_ref()
            .map(|s| (keys::subject(&self.tenant, s), keys::export_run(&self.id)))
    }
}

fn run(tenant: &TenantId, id: &str, expires_at: Option<i64>) -> Run {
    Run {
        tenant: tenant.clone(),
        id: id.to_owned(),
        messages: 7,
        expires_at,
        subject: Some("ps_subject".into()),
    }
}

#[tokio::test]
async fn no_read_helper_returns_expired_items() {
    let stack = TestStack::new().await;
    let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
    let clock = ManualClock::at(now);
    let store = stack.store(Arc::new(clock.clone()));
    let acme = TenantId::parse("acme").unwrap();
    let past = (now - Duration::seconds(1)).timestamp();
    let future = (now + Duration::days(1)).timestamp();
    // Interleave so that filtering, not luck of ordering, decides.
    for i in 0..10 {
        let expires_at = match i % 3 {
            0 => Some(past),
            1 => Some(future),
            _ => None,
        };
        store
            .put(&run(&acme, &format!("{i:02}"), expires_at))
            .await
            .unwrap();
    }
    let live: Vec<String> = (0..10)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("{i:02}"))
        .collect();

    // get
    for i in 0..10 {
        let got = store
            .get::<Run>(&run(&acme, &format!("{i:02}"), None).key())
            .await
            .unwrap();
        assert_eq!(got.is_some(), i % 3 != 0, "get {i}");
    }
    // query, across small pages
    let mut seen = Vec::new();
    let mut request = PageRequest {
        limit: Some(2),
        ..PageRequest::default()
    };
    loop {
        let page = store
            .query::<Run>("T#acme", "RUN#", &request)
            .await
            .unwrap();
        seen.extend(page.items.into_iter().map(|r| r.id));
        match page.next_cursor {
            Some(cursor) => request.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, live);
    // query_all, newest first irrelevant here
    let all: Vec<String> = store
        .query_all::<Run>("T#acme", "RUN#")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all, live);
    // the subject index
    let indexed = store.subject_items(&acme, "ps_subject").await.unwrap();
    assert_eq!(indexed.len(), live.len());
    // take (single-use consume) refuses an expired item
    let taken = store
        .take::<Run>(&run(&acme, "00", None).key())
        .await
        .unwrap();
    assert!(taken.is_none());

    // Time passes: the items that were live expire too.
    clock.advance(Duration::days(2));
    assert!(
        store
            .query_all::<Run>("T#acme", "RUN#")
            .await
            .unwrap()
            .len()
            == 3,
        "only never-expiring"
    );
    assert!(
        store
            .get::<Run>(&run(&acme, "01", None).key())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn creating_an_existing_key_is_a_typed_error() {
    let stack = TestStack::new().await;
    let clock = ManualClock::at(Utc::now());
    let store = stack.store(Arc::new(clock.clone()));
    let acme = TenantId::parse("acme").unwrap();
    let first = run(
        &acme,
        "A",
        Some((Utc::now() + Duration::minutes(10)).timestamp()),
    );
    store.create(&first).await.unwrap();
    let mut second = first.clone();
    second.messages = 99;
    second.expires_at = Some((Utc::now() + Duration::hours(1)).timestamp());
    assert!(matches!(
        store.create(&second).await,
        Err(StoreError::AlreadyExists)
    ));
    let stored: Run = store.get(&first.key()).await.unwrap().unwrap();
    assert_eq!(stored.messages, 7, "the first write is intact");

    // Once the first has expired (TTL not yet run), the key is free again.
    clock.advance(Duration::minutes(11));
    store.create(&second).await.unwrap();
    assert_eq!(
        store
            .get::<Run>(&first.key())
            .await
            .unwrap()
            .unwrap()
            .messages,
        99
    );
}

#[tokio::test]
async fn take_consumes_exactly_once() {
    let stack = TestStack::new().await;
    let store = stack.store(TestStack::system_clock());
    let acme = TenantId::parse("acme").unwrap();
    let state = run(
        &acme,
        "STATE",
        Some((Utc::now() + Duration::minutes(10)).timestamp()),
    );
    store.create(&state).await.unwrap();
    let key = state.key();
    let attempts = futures::future::join_all((0..8).map(|_| store.take::<Run>(&key))).await;
    let winners = attempts
        .into_iter()
        .map(Result::unwrap)
        .filter(Option::is_some)
        .count();
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn a_cursor_from_another_listing_is_refused() {
    let stack = TestStack::new().await;
    let store = stack.store(TestStack::system_clock());
    let acme = TenantId::parse("acme").unwrap();
    for i in 0..3 {
        store.put(&run(&acme, &format!("{i}"), None)).await.unwrap();
    }
    let page = store
        .query::<Run>(
            "T#acme",
            "RUN#",
            &PageRequest {
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let cursor = page.next_cursor.expect("more pages");
    let stolen = PageRequest {
        cursor: Some(cursor),
        ..Default::default()
    };
    assert!(matches!(
        store.query::<Run>("T#globex", "RUN#", &stolen).await,
        Err(StoreError::InvalidCursor)
    ));
}

#[tokio::test]
async fn query_all_reads_a_list_longer_than_one_page_exactly_once() {
    let stack = TestStack::new().await;
    let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
    let store = stack.store(Arc::new(ManualClock::at(now)));
    let acme = TenantId::parse("acme").unwrap();
    let past = (now - Duration::seconds(1)).timestamp();
    let total = 2 * custody::store::QUERY_ALL_PAGE as usize + 37;
    // Every seventh item expired, so filtering happens inside pages too.
    let puts = (0..total).map(|i| {
        let expires_at = (i % 7 == 0).then_some(past);
        let item = run(&acme, &format!("{i:04}"), expires_at);
        let store = &store;
        async move { store.put(&item).await.unwrap() }
    });
    futures_util::future::join_all(puts).await;
    let all = store.query_all::<Run>("T#acme", "RUN#").await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    let expected: Vec<String> = (0..total)
        .filter(|i| i % 7 != 0)
        .map(|i| format!("{i:04}"))
        .collect();
    assert_eq!(ids, expected);
}

/// `put_all` writes more than one batch's worth; `existing` answers over more than one
/// batch read, names a repeated key once, and leaves out missing and expired items
/// (as every read helper does).
#[tokio::test]
async fn batch_writes_and_existence_checks_cover_every_key_once() {
    let stack = TestStack::new().await;
    let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
    let store = stack.store(Arc::new(ManualClock::at(now)));
    let acme = TenantId::parse("acme").unwrap();
    let past = (now - Duration::seconds(1)).timestamp();
    let future = (now + Duration::days(1)).timestamp();
    // 130 items (six batch writes): every tenth expired.
    let runs: Vec<Run> = (0..130)
        .map(|i| {
            let expires_at = if i % 10 == 0 { past } else { future };
            run(&acme, &format!("{i:03}"), Some(expires_at))
        })
        .collect();
    store.put_all(&runs).await.unwrap();
    for r in &runs {
        assert_eq!(
            store.get_item(&r.key()).await.unwrap().is_some(),
            r.expires_at == Some(future)
        );
    }
    // 130 written, 70 never written, and the first 40 asked twice: 240 keys, more than
    // two batch reads.
    let mut asked: Vec<Key> = (0..200)
        .map(|i| run(&acme, &format!("{i:03}"), None).key())
        .collect();
    asked.extend(asked[..40].to_vec());
    let found = store.existing(&asked).await.unwrap();
    let want: std::collections::HashSet<Key> = runs
        .iter()
        .filter(|r| r.expires_at == Some(future))
        .map(Entity::key)
        .collect();
    assert_eq!(want.len(), 117);
    assert_eq!(found, want);
    assert!(store.existing(&[]).await.unwrap().is_empty());
}
