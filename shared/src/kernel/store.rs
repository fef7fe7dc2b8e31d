//! The single DynamoDB table (`pk`/`sk` strings) and its typed entities.
//!
//! DynamoDB TTL deletes expired items lazily, days late. So every read here filters
//! on `expires_at` itself: an item whose time has passed is never returned, counted
//! or treated as present, whether or not TTL has removed it yet.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::kernel::aws::error_text;
use crate::kernel::clock::SharedClock;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::retention::TTL_ATTRIBUTE;
use crate::kernel::tenant::TenantId;

pub type Item = HashMap<String, AttributeValue>;

/// Name of the GSI that finds every record of a data subject.
pub const SUBJECT_INDEX: &str = "by_subject";
pub const SUBJECT_PK: &str = "subject_pk";
pub const SUBJECT_SK: &str = "subject_sk";

/// Key builders, so every key of a tenant starts with `T#<tenant>` (the IAM
/// `dynamodb:LeadingKeys` condition and tenant isolation rely on it).
pub mod keys {
    use crate::kernel::tenant::TenantId;

    pub fn tenant(tenant: &TenantId) -> String {
        format!("T#{tenant}")
    }

    /// Partition of the records that concern one data subject of a tenant.
    pub fn subject(tenant: &TenantId, pseudonym: &str) -> String {
        format!("T#{tenant}#S#{pseudonym}")
    }

    pub fn connection(provider: &str) -> String {
        format!("CONN#{provider}")
    }

    pub fn export_run(run_id: &str) -> String {
        format!("RUN#{run_id}")
    }

    /// A tenant's export settings (one item).
    pub fn export_settings() -> String {
        "EXPORT#SETTINGS".to_owned()
    }

    /// A tenant's export state: the run lease and the active run.
    pub fn export_state() -> String {
        "EXPORT#STATE".to_owned()
    }

    /// The conversation ids a run discovered on one page (its work list). Not under
    /// `RUN#`, so listing runs never returns these.
    pub fn export_run_page(run_id: &str, page: u32) -> String {
        format!("RUNPAGE#{run_id}#{page:06}")
    }

    /// A conversation a run's discovery has put on its work list, by a digest of its
    /// id (hex): the set of conversations seen, kept in the table instead of memory.
    pub fn export_run_seen(run_id: &str, digest: &str) -> String {
        format!("RUNSEEN#{run_id}#{digest}")
    }

    /// One file a run wrote (path, count, hash), for its checkpoint and manifest.
    pub fn export_run_file(run_id: &str, conversation_id: &str) -> String {
        format!("RUNFILE#{run_id}#{conversation_id}")
    }

    pub fn import(import_id: &str) -> String {
        format!("IMP#{import_id}")
    }

    /// Marker that lives as long as an import's stored data (its own prefix, so a
    /// listing of `IMP#` never meets it).
    pub fn import_data(import_id: &str) -> String {
        format!("IMPDATA#{import_id}")
    }

    pub fn privacy_request(request_id: &str) -> String {
        format!("DSAR#{request_id}")
    }

    pub fn consent(purpose: &str) -> String {
        format!("CONSENT#{purpose}")
    }

    pub fn oauth_state(nonce: &str) -> String {
        format!("STATE#{nonce}")
    }

    /// Which tenants hold a connection to a HighLevel location (for the UNINSTALL
    /// webhook, which names the location only). Sort key: [`tenant`].
    pub fn highlevel_location(location_id: &str) -> String {
        format!("LOC#{location_id}")
    }

    /// Which tenants hold an agency-level connection to a HighLevel company.
    pub fn highlevel_company(company_id: &str) -> String {
        format!("CO#{company_id}")
    }

    /// Marketplace installs of `provider` no tenant has claimed yet, and the install
    /// webhooks that corroborate them: one partition, so the sweep finds them with a
    /// query. Sort keys `P#<installation>` and `W#<installation>`.
    pub fn installations(provider: &str) -> String {
        format!("INSTALL#{provider}")
    }

    /// Receipt of a provider webhook delivery, for replay protection.
    pub fn webhook_receipt(provider: &str, webhook_id: &str) -> String {
        format!("WH#{provider}#{webhook_id}")
    }

    pub fn idempotency(tenant: &TenantId, key: &str) -> String {
        format!("T#{tenant}#IDEM#{key}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Self {
            pk: pk.into(),
            sk: sk.into(),
        }
    }

    fn to_item(&self) -> Item {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S(self.pk.clone())),
            ("sk".to_owned(), AttributeValue::S(self.sk.clone())),
        ])
    }
}

/// A record type of the table. Its fields are stored as attributes next to `pk`,
/// `sk`, `kind`, and — when given — `expires_at` and the subject-index keys.
pub trait Entity: Serialize + DeserializeOwned {
    /// Stored in the `kind` attribute, so a raw scan says what each item is.
    const KIND: &'static str;

    fn key(&self) -> Key;

    /// Epoch seconds after which the item is treated as gone (TTL attribute).
    fn expires_at(&self) -> Option<i64> {
        None
    }

    /// `(subject_pk, subject_sk)` when the item holds a data subject's data.
    fn subject_index(&self) -> Option<(String, String)> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an item with this key already exists")]
    AlreadyExists,
    #[error("the item's condition did not hold")]
    ConditionFailed,
    #[error("the pagination cursor is not valid for this listing")]
    InvalidCursor,
    #[error("stored item could not be read as {kind}: {reason}")]
    Decode { kind: &'static str, reason: String },
    #[error("item could not be written: {0}")]
    Encode(String),
    #[error("DynamoDB call failed: {0}")]
    Dynamo(String),
}

impl HttpError for StoreError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            StoreError::InvalidCursor => HttpAnswer::bad_request("cursor", self.to_string()),
            StoreError::AlreadyExists | StoreError::ConditionFailed => {
                HttpAnswer::conflict(self.to_string())
            }
            StoreError::Decode { .. } | StoreError::Encode(_) | StoreError::Dynamo(_) => {
                HttpAnswer::internal_logged("store error", self)
            }
        }
    }
}

/// An extra condition for a write, in DynamoDB expression syntax.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    pub expression: String,
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
}

impl Condition {
    pub fn new(expression: impl Into<String>) -> Self {
        Self {
            expression: expression.into(),
            ..Self::default()
        }
    }

    pub fn name(mut self, placeholder: &str, attribute: &str) -> Self {
        self.names
            .insert(placeholder.to_owned(), attribute.to_owned());
        self
    }

    pub fn value(mut self, placeholder: &str, value: AttributeValue) -> Self {
        self.values.insert(placeholder.to_owned(), value);
        self
    }
}

/// One page of a listing, with the cursor of the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Items per request when [`Store::query_all`] reads a whole list.
pub const QUERY_ALL_PAGE: i32 = 200;
/// DynamoDB's most items per BatchWriteItem and keys per BatchGetItem.
pub const BATCH_WRITE: usize = 25;
pub const BATCH_GET: usize = 100;
/// Requests per batch before items or keys DynamoDB keeps leaving unprocessed are an
/// error.
const BATCH_ATTEMPTS: u32 = 10;

/// The pause before a batch's `attempt`-th resend: 50 ms doubling, at most 3.2 s.
fn batch_pause(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(50 << attempt.min(6))
}

#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: Option<i32>,
    pub cursor: Option<String>,
    /// Newest first when sort keys are time-ordered (ULIDs).
    pub descending: bool,
}

/// Access to the single table.
#[derive(Clone, Debug)]
pub struct Store {
    client: aws_sdk_dynamodb::Client,
    table: String,
    clock: SharedClock,
}

impl Store {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        clock: SharedClock,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            clock,
        }
    }

    pub fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    fn now_epoch(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// Whether a raw item is past its `expires_at` at this store's now.
    pub fn is_expired(&self, item: &Item) -> bool {
        is_expired_at(item, self.now_epoch())
    }

    /// Serialises an entity to the item that is stored.
    pub fn encode<E: Entity>(entity: &E) -> Result<Item, StoreError> {
        let mut item: Item =
            serde_dynamo::to_item(entity).map_err(|err| StoreError::Encode(err.to_string()))?;
        // `None` fields would be stored as NULL attributes: a NULL `expires_at` defeats
        // the expiry filter and a NULL index key is rejected, so absent means absent.
        item.retain(|_, value| !matches!(value, AttributeValue::Null(_)));
        // These attributes are the store's own; an entity field of the same name with a
        // different value would be silently overwritten, so refuse it loudly instead.
        let key = entity.key();
        let subject = entity.subject_index();
        let owned: [(&str, Option<String>); 5] = [
            ("pk", Some(key.pk.clone())),
            ("sk", Some(key.sk.clone())),
            ("kind", Some(E::KIND.to_owned())),
            (SUBJECT_PK, subject.as_ref().map(|s| s.0.clone())),
            (SUBJECT_SK, subject.as_ref().map(|s| s.1.clone())),
        ];
        for (reserved, value) in owned {
            if let Some(field) = item.get(reserved)
                && field.as_s().ok() != value.as_ref()
            {
                return Err(StoreError::Encode(format!(
                    "{} has a field named `{reserved}` with another value than the store writes",
                    E::KIND
                )));
            }
        }
        item.remove(TTL_ATTRIBUTE);
        item.extend(entity.key().to_item());
        item.insert("kind".to_owned(), AttributeValue::S(E::KIND.to_owned()));
        if let Some(expires_at) = entity.expires_at() {
            item.insert(
                TTL_ATTRIBUTE.to_owned(),
                AttributeValue::N(expires_at.to_string()),
            );
        }
        if let Some((subject_pk, subject_sk)) = entity.subject_index() {
            item.insert(SUBJECT_PK.to_owned(), AttributeValue::S(subject_pk));
            item.insert(SUBJECT_SK.to_owned(), AttributeValue::S(subject_sk));
        }
        Ok(item)
    }

    pub fn decode<E: Entity>(item: Item) -> Result<E, StoreError> {
        serde_dynamo::from_item(item).map_err(|err| StoreError::Decode {
            kind: E::KIND,
            reason: err.to_string(),
        })
    }

    /// Writes a new item; fails with [`StoreError::AlreadyExists`] if a live item has
    /// the key. An expired item that TTL has not removed yet counts as absent.
    pub async fn create<E: Entity>(&self, entity: &E) -> Result<(), StoreError> {
        let condition = Condition::new("attribute_not_exists(pk) OR #exp <= :now")
            .name("#exp", TTL_ATTRIBUTE)
            .value(":now", AttributeValue::N(self.now_epoch().to_string()));
        match self.put_if(entity, condition).await {
            Err(StoreError::ConditionFailed) => Err(StoreError::AlreadyExists),
            other => other,
        }
    }

    /// Writes (creates or replaces) an item unconditionally.
    pub async fn put<E: Entity>(&self, entity: &E) -> Result<(), StoreError> {
        let item = Self::encode(entity)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|err| StoreError::Dynamo(error_text(&err)))?;
        Ok(())
    }

    /// Writes an item only if `condition` holds for the current one.
    pub async fn put_if<E: Entity>(
        &self,
        entity: &E,
        condition: Condition,
    ) -> Result<(), StoreError> {
        let item = Self::encode(entity)?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition.expression)
            .set_expression_attribute_names(non_empty(condition.names))
            .set_expression_attribute_values(non_empty(condition.values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::ConditionFailed)
            }
            Err(err) => Err(StoreError::Dynamo(error_text(&err))),
        }
    }

    /// The raw live item at `key` (strongly consistent), or `None` if absent or expired.
    pub async fn get_item(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key.to_item()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| StoreError::Dynamo(error_text(&err)))?;
        Ok(out.item.filter(|item| !self.is_expired(item)))
    }

    /// The live entity at `key`, or `None` if absent or expired.
    pub async fn get<E: Entity>(&self, key: &Key) -> Result<Option<E>, StoreError> {
        self.get_item(key).await?.map(Self::decode).transpose()
    }

    /// Deletes the item at `key` (no error if it is absent).
    pub async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key.to_item()))
            .send()
            .await
            .map_err(|err| StoreError::Dynamo(error_text(&err)))?;
        Ok(())
    }

    /// Deletes the item at `key` only if `condition` holds for it: whether it did.
    pub async fn delete_if(&self, key: &Key, condition: Condition) -> Result<bool, StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key.to_item()))
            .condition_expression(condition.expression)
            .set_expression_attribute_names(non_empty(condition.names))
            .set_expression_attribute_values(non_empty(condition.values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(err) => Err(StoreError::Dynamo(error_text(&err))),
        }
    }

    /// Consumes a single-use item: deletes it and returns it, atomically. Of two
    /// concurrent callers exactly one gets the item. An expired item is not returned.
    pub async fn take<E: Entity>(&self, key: &Key) -> Result<Option<E>, StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key.to_item()))
            .condition_expression(
                "attribute_exists(pk) AND (attribute_not_exists(#exp) OR #exp > :now)",
            )
            .expression_attribute_names("#exp", TTL_ATTRIBUTE)
            .expression_attribute_values(":now", AttributeValue::N(self.now_epoch().to_string()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => out.attributes.map(Self::decode).transpose(),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(err) => Err(StoreError::Dynamo(error_text(&err))),
        }
    }

    /// Lists the live items of partition `pk` whose sort key starts with `sk_prefix`.
    pub async fn query<E: Entity>(
        &self,
        pk: &str,
        sk_prefix: &str,
        page: &PageRequest,
    ) -> Result<Page<E>, StoreError> {
        let start = page
            .cursor
            .as_deref()
            .map(|cursor| decode_cursor(cursor, pk, sk_prefix))
            .transpose()?;
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .filter_expression("attribute_not_exists(#exp) OR #exp > :now")
            .expression_attribute_names("#exp", TTL_ATTRIBUTE)
            .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
            .expression_attribute_values(":prefix", AttributeValue::S(sk_prefix.to_owned()))
            .expression_attribute_values(":now", AttributeValue::N(self.now_epoch().to_string()))
            .scan_index_forward(!page.descending)
            .set_limit(page.limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|err| StoreError::Dynamo(error_text(&err)))?;
        let items = out
            .items
            .unwrap_or_default()
            .into_iter()
            // The filter runs in DynamoDB; checking again costs nothing and keeps the
            // promise even if an emulator or a future edit drops the filter.
            .filter(|item| !self.is_expired(item))
            .map(Self::decode)
            .collect::<Result<Vec<E>, _>>()?;
        let next_cursor = out.last_evaluated_key.as_ref().map(encode_cursor);
        Ok(Page { items, next_cursor })
    }

    /// Every live item in partition `pk` with the prefix, across all pages.
    pub async fn query_all<E: Entity>(
        &self,
        pk: &str,
        sk_prefix: &str,
    ) -> Result<Vec<E>, StoreError> {
        // Bounded pages: without a limit one response holds up to 1 MB of items,
        // all decoded to attribute maps at once before they become entities.
        let mut request = PageRequest {
            limit: Some(QUERY_ALL_PAGE),
            ..PageRequest::default()
        };
        let mut all = Vec::new();
        loop {
            let page = self.query::<E>(pk, sk_prefix, &request).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(cursor) => request.cursor = Some(cursor),
                None => return Ok(all),
            }
        }
    }

    /// Writes every entity, [`BATCH_WRITE`] to a request. Items DynamoDB leaves
    /// unprocessed (throttling) are sent again, with a growing pause, a bounded number
    /// of times. Not atomic: each item lands or not on its own, so callers only batch
    /// writes that are safe to repeat.
    pub async fn put_all<E: Entity>(&self, entities: &[E]) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        for chunk in entities.chunks(BATCH_WRITE) {
            let mut requests = chunk
                .iter()
                .map(|entity| {
                    let put = PutRequest::builder()
                        .set_item(Some(Self::encode(entity)?))
                        .build()
                        .map_err(|e| StoreError::Encode(e.to_string()))?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            for attempt in 0..BATCH_ATTEMPTS {
                if requests.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(batch_pause(attempt)).await;
                }
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(|err| StoreError::Dynamo(error_text(&err)))?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut items| items.remove(&self.table))
                    .unwrap_or_default();
            }
            if !requests.is_empty() {
                return Err(StoreError::Dynamo(format!(
                    "{} items stayed unprocessed after {BATCH_ATTEMPTS} batch writes",
                    requests.len()
                )));
            }
        }
        Ok(())
    }

    /// Which of `keys` hold a live item: consistent reads, [`BATCH_GET`] keys to a
    /// request, only the keys and the expiry read back. Keys DynamoDB leaves
    /// unprocessed are asked again, a bounded number of times.
    pub async fn existing(&self, keys: &[Key]) -> Result<HashSet<Key>, StoreError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut found = HashSet::new();
        let mut distinct: Vec<&Key> = keys.iter().collect();
        distinct.sort_by(|a, b| (&a.pk, &a.sk).cmp(&(&b.pk, &b.sk)));
        // BatchGetItem refuses a request that names one key twice.
        distinct.dedup();
        for chunk in distinct.chunks(BATCH_GET) {
            let mut wanted = KeysAndAttributes::builder()
                .set_keys(Some(chunk.iter().map(|key| key.to_item()).collect()))
                .consistent_read(true)
                .projection_expression("pk, sk, #exp")
                .expression_attribute_names("#exp", TTL_ATTRIBUTE)
                .build()
                .map_err(|e| StoreError::Encode(e.to_string()))?;
            let mut attempt = 0;
            loop {
                if attempt > 0 {
                    tokio::time::sleep(batch_pause(attempt)).await;
                }
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, wanted)
                    .send()
                    .await
                    .map_err(|err| StoreError::Dynamo(error_text(&err)))?;
                for item in out
                    .responses
                    .and_then(|mut tables| tables.remove(&self.table))
                    .unwrap_or_default()
                {
                    if self.is_expired(&item) {
                        continue;
                    }
                    if let (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) =
                        (item.get("pk"), item.get("sk"))
                    {
                        found.insert(Key::new(pk.clone(), sk.clone()));
                    }
                }
                match out
                    .unprocessed_keys
                    .and_then(|mut tables| tables.remove(&self.table))
                {
                    Some(rest) if !rest.keys.is_empty() => wanted = rest,
                    _ => break,
                }
                attempt += 1;
                if attempt == BATCH_ATTEMPTS {
                    return Err(StoreError::Dynamo(format!(
                        "keys stayed unprocessed after {BATCH_ATTEMPTS} batch reads"
                    )));
                }
            }
        }
        Ok(found)
    }

    /// Keys of every live item indexed under a data subject (the `by_subject` GSI),
    /// so a data-subject request costs in proportion to that subject's records.
    pub async fn subject_items(
        &self,
        tenant: &TenantId,
        pseudonym: &str,
    ) -> Result<Vec<Item>, StoreError> {
        self.subject_index(tenant, pseudonym, true).await
    }

    /// The same, expired items included: for erasure only, which must also reach
    /// what TTL has not deleted yet (erasing more is safe; disclosing is not, so
    /// every other read filters).
    pub async fn subject_items_for_erasure(
        &self,
        tenant: &TenantId,
        pseudonym: &str,
    ) -> Result<Vec<Item>, StoreError> {
        self.subject_index(tenant, pseudonym, false).await
    }

    /// The entity at `key` whether or not it has expired: for erasure only (see
    /// [`Store::subject_items_for_erasure`]).
    pub async fn get_for_erasure<E: Entity>(&self, key: &Key) -> Result<Option<E>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key.to_item()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| StoreError::Dynamo(error_text(&err)))?;
        out.item.map(Self::decode).transpose()
    }

    async fn subject_index(
        &self,
        tenant: &TenantId,
        pseudonym: &str,
        live_only: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let subject_pk = keys::subject(tenant, pseudonym);
        let mut start: Option<Item> = None;
        let mut all = Vec::new();
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(SUBJECT_INDEX)
                .key_condition_expression("#spk = :spk")
                .expression_attribute_names("#spk", SUBJECT_PK)
                .expression_attribute_values(":spk", AttributeValue::S(subject_pk.clone()));
            if live_only {
                query = query
                    .filter_expression("attribute_not_exists(#exp) OR #exp > :now")
                    .expression_attribute_names("#exp", TTL_ATTRIBUTE)
                    .expression_attribute_values(
                        ":now",
                        AttributeValue::N(self.now_epoch().to_string()),
                    );
            }
            let out = query
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|err| StoreError::Dynamo(error_text(&err)))?;
            all.extend(
                out.items
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|item| !live_only || !self.is_expired(item)),
            );
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(all),
            }
        }
    }
}

fn non_empty<K, V>(map: HashMap<K, V>) -> Option<HashMap<K, V>> {
    (!map.is_empty()).then_some(map)
}

/// Whether `item` has an `expires_at` at or before `now` (epoch seconds).
pub fn is_expired_at(item: &Item, now: i64) -> bool {
    match item.get(TTL_ATTRIBUTE) {
        Some(AttributeValue::N(n)) => n.parse::<i64>().map(|at| at <= now).unwrap_or(false),
        _ => false,
    }
}

fn encode_cursor(last_key: &Item) -> String {
    let mut plain: Vec<(&str, &str)> = last_key
        .iter()
        .filter_map(|(name, value)| value.as_s().ok().map(|s| (name.as_str(), s.as_str())))
        .collect();
    plain.sort();
    let json = serde_json::to_vec(&plain).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a cursor and checks that it points into the listing it is used for: a
/// cursor is caller input, and must never start a read in another partition.
fn decode_cursor(cursor: &str, pk: &str, sk_prefix: &str) -> Result<Item, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    let pairs: Vec<(String, String)> =
        serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
    let item: Item = pairs
        .into_iter()
        .map(|(name, value)| (name, AttributeValue::S(value)))
        .collect();
    let matches = |name: &str, check: &dyn Fn(&str) -> bool| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .is_some_and(|s| check(s))
    };
    if item.len() != 2
        || !matches("pk", &|s| s == pk)
        || !matches("sk", &|s| s.starts_with(sk_prefix))
    {
        return Err(StoreError::InvalidCursor);
    }
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A cursor is caller input: any string is a cursor or `InvalidCursor`, and
        /// a decoded one never points outside its listing.
        #[test]
        fn any_cursor_decodes_or_is_refused(raw in ".{0,200}", json in "\\[\\[\"(pk|sk|x)\",\"[A-Z#a-z0-9]{0,12}\"\\](,\\[\"(pk|sk)\",\"[A-Z#a-z0-9]{0,12}\"\\]){0,2}\\]") {
            for cursor in [raw.clone(), URL_SAFE_NO_PAD.encode(json.as_bytes())] {
                match decode_cursor(&cursor, "T#a", "RUN#") {
                    Ok(item) => {
                        proptest::prop_assert_eq!(item.get("pk").and_then(|v| v.as_s().ok()).map(String::as_str), Some("T#a"));
                        proptest::prop_assert!(item.get("sk").and_then(|v| v.as_s().ok()).is_some_and(|s| s.starts_with("RUN#")));
                    }
                    Err(err) => proptest::prop_assert!(matches!(err, StoreError::InvalidCursor)),
                }
            }
        }
    }

    #[test]
    fn cursor_round_trips_and_is_bound_to_its_listing() {
        let key = Key::new("T#a", "RUN#01").to_item();
        let cursor = encode_cursor(&key);
        assert_eq!(decode_cursor(&cursor, "T#a", "RUN#").unwrap(), key);
        assert!(matches!(
            decode_cursor(&cursor, "T#b", "RUN#"),
            Err(StoreError::InvalidCursor)
        ));
        assert!(matches!(
            decode_cursor(&cursor, "T#a", "IMP#"),
            Err(StoreError::InvalidCursor)
        ));
        assert!(matches!(
            decode_cursor("!!", "T#a", "RUN#"),
            Err(StoreError::InvalidCursor)
        ));
    }

    #[test]
    fn expiry_check() {
        let mut item = Key::new("a", "b").to_item();
        assert!(!is_expired_at(&item, 100));
        item.insert(TTL_ATTRIBUTE.into(), AttributeValue::N("100".into()));
        assert!(is_expired_at(&item, 100));
        assert!(!is_expired_at(&item, 99));
    }

    #[test]
    fn every_store_error_has_its_http_answer() {
        use crate::kernel::http::table::{internal, row, shown};

        let cursor = shown(400, "invalid-request", Some("cursor"));
        assert_eq!(row(&StoreError::InvalidCursor), cursor);
        assert_eq!(
            row(&StoreError::AlreadyExists),
            shown(409, "conflict", None)
        );
        assert_eq!(
            row(&StoreError::ConditionFailed),
            shown(409, "conflict", None)
        );
        for err in [
            StoreError::Decode {
                kind: "connection",
                reason: "missing field".into(),
            },
            StoreError::Encode("bad map".into()),
            StoreError::Dynamo("ResourceNotFoundException: table custody-x".into()),
        ] {
            assert_eq!(row(&err), internal(), "{err}");
        }
    }
}
