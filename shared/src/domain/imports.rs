//! Imports: customer data that enters custody as a file (CSV or JSON Lines, uploaded
//! with a presigned PUT) or as JSON row batches, is pushed to the tenant's destination
//! webhook, and expires by itself with its retention class.
//!
//! # What is stored where
//!
//! - The [`Import`] item (`T#<tenant>` / `IMP#<id>`) is the long-lived log: format,
//!   mode, retention class, status, counts, bytes, SHA-256, errors by line number,
//!   timestamps and the sealed webhook secret. It never holds row data (errors name
//!   the line and the rule, never the value).
//! - The data lives in the imports bucket under `imports/<tenant>/<import>/`:
//!   - a file import keeps the uploaded object as is: `upload.csv` or `upload.jsonl`;
//!   - a rows import stores each posted batch's valid rows as one JSON Lines object,
//!     one JSON object per line: `rows/<seq>.jsonl` (`seq` 1-based, 8 digits).
//!
//!   Every object carries the tag [`crate::kernel::retention::S3_TAG_KEY`] = class name, so
//!   the bucket's lifecycle rule of that class deletes it (all versions).
//! - One [`SubjectRef`] per (subject, object) in the `by_subject` index: `source`
//!   `ImportObject`, `source_id` = `<import>/<object name>` (e.g.
//!   `01J…/upload.csv`, `01J…/rows/00000001.jsonl`), `object_key` = the full S3 key,
//!   `count` = rows of that object naming the subject, `expires_at` = the object's
//!   expiry. A data-subject request reads the object and keeps the rows whose subject
//!   columns ([`subject_kind`]) pseudonymise to the subject; [`ObjectKey::parse`] and
//!   [`stream_rows`] do the reading.
//! - An [`ImportData`] marker (`IMPDATA#<id>`) expires with the data; its TTL removal
//!   tells the expiry function that the import's data is gone.
//!
//! # Rows
//!
//! A row is a JSON object. CSV rows are `{header: value}` with string values; the
//! first line must be a header row of column names. JSON Lines rows are the objects
//! as given. A physical line or CSV record longer than [`MAX_ROW_BYTES`], invalid
//! UTF-8, binary bytes, an unterminated quote, a missing header and an empty file make
//! the whole file invalid (nothing is pushed). A row that breaks a row rule (wrong
//! number of fields, not an object, a required column empty, an unparseable subject
//! identifier) is skipped and reported by line number.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier, Tag, Tagging};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use secrecy::SecretSlice;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::subject::{Identifier, IdentifierKind, Pseudonym, PseudonymKey};
use crate::domain::suppression::{Reason, Suppressed};
use crate::kernel::aws::error_text;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::retention::{RetentionClass, S3_TAG_KEY};
use crate::kernel::seal::Sealed;
use crate::kernel::store::{Condition, Entity, Key, Page, PageRequest, Store, StoreError, keys};
use crate::kernel::subject_index::{Source, SubjectRef};
use crate::kernel::tenant::TenantId;

/// Longest CSV record or JSON line, in bytes.
pub const MAX_ROW_BYTES: usize = 64 * 1024;
/// Most columns a CSV header may have.
pub const MAX_COLUMNS: usize = 256;
/// Longest column name.
pub const MAX_COLUMN_NAME_LEN: usize = 64;
/// Errors kept on the import item; further ones are counted in `rows_invalid` only.
pub const MAX_RECORDED_ERRORS: usize = 100;
/// Largest file a presigned upload may carry.
pub const MAX_UPLOAD_BYTES: u64 = 1 << 30;
/// Every import object's key starts with this.
pub const OBJECT_PREFIX: &str = "imports/";
/// Column names (compared after trimming, lowercasing and turning `-` and spaces
/// into `_`) whose values identify a data subject.
pub const EMAIL_COLUMNS: [&str; 10] = [
    "email",
    "email_address",
    "e_mail",
    "e_mail_address",
    "mail",
    "customer_email",
    "contact_email",
    "client_email",
    "user_email",
    "primary_email",
];
pub const PHONE_COLUMNS: [&str; 14] = [
    "phone",
    "phone_number",
    "mobile",
    "mobile_number",
    "mobile_phone",
    "cell",
    "cell_phone",
    "telephone",
    "tel",
    "customer_phone",
    "contact_phone",
    "client_phone",
    "user_phone",
    "primary_phone",
];
pub const CONTACT_ID_COLUMNS: [&str; 4] =
    ["contact_id", "contactid", "crm_contact_id", "customer_id"];
/// The tag an erasure's rewrite of an import object carries (beside the retention
/// tag), so the import function tells that new version from a second upload to a
/// reused presigned URL. Tenants cannot set it: the presigned PUT signs its tagging.
pub const REWRITE_TAG: (&str, &str) = ("custody-origin", "erasure");
/// Most identifier fields an import may declare.
pub const MAX_IDENTIFIER_FIELDS: usize = 16;
/// Longest declared JSON pointer, and most segments in it.
pub const MAX_POINTER_LEN: usize = 256;
pub const MAX_POINTER_DEPTH: usize = 8;

// ---------------------------------------------------------------------------------
// The import log
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Csv,
    Jsonl,
    /// Rows posted as JSON batches to `POST /imports/{id}/rows`.
    Rows,
}

impl Format {
    /// The content type a presigned upload is bound to.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv",
            Format::Jsonl | Format::Rows => "application/x-ndjson",
        }
    }

    /// The uploaded object's name within the import's prefix.
    pub fn upload_name(self) -> Option<&'static str> {
        match self {
            Format::Csv => Some("upload.csv"),
            Format::Jsonl => Some("upload.jsonl"),
            Format::Rows => None,
        }
    }

    /// How the stored objects of this format are parsed (row batches are JSON Lines).
    pub fn object_format(self) -> Format {
        match self {
            Format::Csv => Format::Csv,
            Format::Jsonl | Format::Rows => Format::Jsonl,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Keep the data until its retention class expires it.
    Store,
    /// Push to the destination and keep nothing: the upload (class `bypass`) is
    /// deleted when processing ends, whatever the outcome.
    Bypass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the upload or for row batches.
    Created,
    /// Being validated and pushed.
    Processing,
    /// Every valid row reached the destination.
    Delivered,
    /// A batch kept failing; in store mode the data stays stored until it expires,
    /// and `POST /imports/{id}/retry` resumes from the first undelivered batch (in
    /// bypass mode it is deleted: nothing to resume from).
    DeliveryFailed,
    /// The file as a whole is unusable (see `error`); nothing was pushed.
    Invalid,
    /// The data reached the end of its retention and is gone. Readers show it from
    /// `data_expires_at` on ([`Import::seen_at`]), before the platform deletes.
    Expired,
    /// The data was deleted on request.
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Processing => "processing",
            Status::Delivered => "delivered",
            Status::DeliveryFailed => "delivery_failed",
            Status::Invalid => "invalid",
            Status::Expired => "expired",
            Status::Deleted => "deleted",
        }
    }

    /// Whether the import's data is gone for good.
    pub fn is_gone(self) -> bool {
        matches!(self, Status::Expired | Status::Deleted)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row (or line) that was rejected: where, and which rule it broke. Never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    /// For rows imports: the 1-based batch the row was posted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// 1-based line of the file (CSV: where the record starts; the header is line 1),
    /// or 1-based position of the row within its batch.
    pub line: u64,
    pub message: String,
}

/// The import log entry. Metadata only: never row data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Import {
    pub tenant: TenantId,
    pub id: String,
    pub format: Format,
    pub mode: Mode,
    pub retention_class: RetentionClass,
    pub status: Status,
    pub destination_url: String,
    /// The webhook signing secret, sealed for (tenant, `webhook_secret`, `IMP#<id>`).
    pub destination_secret: Sealed,
    #[serde(default)]
    pub required_columns: Vec<String>,
    /// Country calling code for phone numbers written without one (e.g. `44`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_country_code: Option<String>,
    /// Where rows carry subject identifiers beyond the default column names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier_fields: Option<IdentifierFields>,
    /// For file imports: the size the upload URL is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_bytes: Option<u64>,
    /// The processing purpose the rows are pushed for, one the tenant declared
    /// (`PrivacySettings::purposes`): subjects who withdrew consent for it are left
    /// out of the pushes, as are restricted subjects whatever the purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// `user:<sub>` of the creator.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub bytes: u64,
    /// Hex SHA-256 of the uploaded file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub rows_total: u64,
    #[serde(default)]
    pub rows_valid: u64,
    #[serde(default)]
    pub rows_invalid: u64,
    #[serde(default)]
    pub rows_delivered: u64,
    /// Valid rows not pushed because their subject's processing is restricted.
    #[serde(default)]
    pub rows_restricted: u64,
    /// Valid rows not pushed because their subject withdrew consent for `purpose`.
    #[serde(default)]
    pub rows_consent_withdrawn: u64,
    /// Webhook batches done: acknowledged by the destination, or with every row left
    /// out ([`LeftOut`]), so not sent. Delivery resumes after them.
    #[serde(default)]
    pub batches_delivered: u64,
    /// Rows imports: batches posted so far.
    #[serde(default)]
    pub row_batches: u64,
    /// The first [`MAX_RECORDED_ERRORS`] rejected rows.
    #[serde(default)]
    pub errors: Vec<LineError>,
    /// Why the import is `invalid` or `delivery_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the stored data expires (epoch seconds), once there is data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_deleted_at: Option<DateTime<Utc>>,
    /// For file imports: the object version that was processed. Any other version
    /// uploaded to the same key (a reused presigned URL) is deleted and audited, never
    /// left unvalidated, unindexed and invisible to data-subject requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_version: Option<String>,
    /// Whether the audit entry recording how the import ended is written. The end is
    /// recorded on this item first; a failure before the entry (or a crash) leaves
    /// this false, and the next delivery of the event writes it, once.
    #[serde(default)]
    pub final_audited: bool,
    /// Delivery attempts after the first (`POST /imports/{id}/retry`); the end entry
    /// carries it, so a redelivered event tells this attempt's entry from an earlier one.
    #[serde(default)]
    pub retries: u32,
    /// Optimistic concurrency: every write requires the revision it read.
    #[serde(default)]
    pub revision: u64,
}

impl Import {
    pub fn key_of(tenant: &TenantId, id: &str) -> Key {
        Key::new(keys::tenant(tenant), keys::import(id))
    }

    /// The import's S3 prefix.
    pub fn prefix(&self) -> String {
        import_prefix(&self.tenant, &self.id)
    }

    /// The key a file import's upload goes to.
    pub fn upload_key(&self) -> Option<String> {
        self.format
            .upload_name()
            .map(|name| format!("{}{name}", self.prefix()))
    }

    /// Records a rejected row, keeping at most [`MAX_RECORDED_ERRORS`].
    pub fn record_error(&mut self, error: LineError) {
        self.rows_invalid += 1;
        if self.errors.len() < MAX_RECORDED_ERRORS {
            self.errors.push(error);
        }
    }

    pub fn rules(&self) -> RowRules {
        RowRules {
            required: self.required_columns.clone(),
            default_country_code: self.default_country_code.clone(),
            identifiers: self.identifier_fields.clone(),
        }
    }

    /// Whether the import's data is past its retention at `now`: marked `expired`, or
    /// `data_expires_at` reached. S3 lifecycle and DynamoDB TTL delete days late, so
    /// readers go by the number, not by whether the platform has acted yet.
    pub fn past_retention(&self, now: DateTime<Utc>) -> bool {
        self.status == Status::Expired
            || self.data_expires_at.is_some_and(|at| at <= now.timestamp())
    }

    /// The import as a reader sees it at `now`: past its retention it is `expired`,
    /// the same before and after the platform deleted the data.
    pub fn seen_at(mut self, now: DateTime<Utc>) -> Self {
        if self.past_retention(now) && !self.status.is_gone() {
            self.status = Status::Expired;
        }
        self
    }
}

impl Entity for Import {
    const KIND: &'static str = "import";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant, &self.id)
    }
}

/// Lives exactly as long as an import's stored data (`expires_at` = the latest
/// object's expiry); its TTL removal is the evidence that the data expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportData {
    pub tenant: TenantId,
    pub import_id: String,
    pub retention_class: RetentionClass,
    pub expires_at: i64,
}

impl ImportData {
    pub const KIND: &'static str = "import_data";
}

impl Entity for ImportData {
    const KIND: &'static str = ImportData::KIND;

    fn key(&self) -> Key {
        Key::new(
            keys::tenant(&self.tenant),
            keys::import_data(&self.import_id),
        )
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

// ---------------------------------------------------------------------------------
// Object keys
// ---------------------------------------------------------------------------------

/// `imports/<tenant>/`
pub fn tenant_prefix(tenant: &TenantId) -> String {
    format!("{OBJECT_PREFIX}{tenant}/")
}

/// `imports/<tenant>/<import>/`
pub fn import_prefix(tenant: &TenantId, import_id: &str) -> String {
    format!("{OBJECT_PREFIX}{tenant}/{import_id}/")
}

/// `imports/<tenant>/<import>/rows/<seq>.jsonl`
pub fn rows_batch_key(tenant: &TenantId, import_id: &str, seq: u64) -> String {
    format!("{}rows/{seq:08}.jsonl", import_prefix(tenant, import_id))
}

/// Import ids are ULIDs: 26 characters of Crockford base32, upper case.
pub fn is_import_id(id: &str) -> bool {
    id.len() == 26
        && ulid::Ulid::from_string(id).is_ok()
        && !id.bytes().any(|b| b.is_ascii_lowercase())
}

/// A new import id.
pub fn new_import_id() -> String {
    ulid::Ulid::new().to_string()
}

/// The sort-key prefix of every subject ref of an import.
pub fn import_refs_prefix(import_id: &str) -> String {
    format!("{}{import_id}/", all_refs_prefix())
}

/// The sort-key prefix of every import subject ref of a tenant.
pub fn all_refs_prefix() -> String {
    format!("REF#{}#", Source::ImportObject.as_str())
}

/// An object key as S3 notifications carry it: URL-encoded, `+` for space.
pub fn decode_event_key(raw: &str) -> String {
    let query = format!("k={raw}");
    url::form_urlencoded::parse(query.as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// What an import object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// The uploaded file of a file import.
    Upload(Format),
    /// A stored batch of a rows import.
    RowsBatch(u64),
}

/// A parsed import object key: `imports/<tenant>/<import>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    pub tenant: TenantId,
    pub import_id: String,
    /// The path below the import's prefix: `upload.csv`, `rows/00000001.jsonl`.
    pub name: String,
    pub kind: ObjectKind,
}

impl ObjectKey {
    /// Parses a key; `None` for anything that is not an import object custody writes.
    pub fn parse(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(OBJECT_PREFIX)?;
        let (tenant, rest) = rest.split_once('/')?;
        let tenant = TenantId::parse(tenant).ok()?;
        let (import_id, name) = rest.split_once('/')?;
        if !is_import_id(import_id) {
            return None;
        }
        let kind = match name {
            "upload.csv" => ObjectKind::Upload(Format::Csv),
            "upload.jsonl" => ObjectKind::Upload(Format::Jsonl),
            _ => {
                let seq = name.strip_prefix("rows/")?.strip_suffix(".jsonl")?;
                if seq.len() != 8 || !seq.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                ObjectKind::RowsBatch(seq.parse().ok()?)
            }
        };
        Some(Self {
            tenant,
            import_id: import_id.to_owned(),
            name: name.to_owned(),
            kind,
        })
    }

    pub fn key(&self) -> String {
        format!(
            "{}{}",
            import_prefix(&self.tenant, &self.import_id),
            self.name
        )
    }

    /// The `source_id` of the subject refs pointing at this object.
    pub fn ref_source_id(&self) -> String {
        format!("{}/{}", self.import_id, self.name)
    }

    /// The sort-key prefix of every subject ref of this object.
    pub fn refs_prefix(&self) -> String {
        SubjectRef::source_prefix(Source::ImportObject, &self.ref_source_id())
    }
}

// ---------------------------------------------------------------------------------
// Row rules and subject columns
// ---------------------------------------------------------------------------------

fn normalise_column(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c {
            '-' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The kind of identifier a column holds, by its name (see the `*_COLUMNS` lists).
/// Runs for every column of every imported row, so it compares in place rather than
/// building the normalised name.
pub fn subject_kind(column: &str) -> Option<IdentifierKind> {
    let name = column.trim();
    let is = |known: &&str| {
        known.len() == name.len()
            && known.bytes().zip(name.bytes()).all(|(k, c)| {
                k == match c {
                    b'-' | b' ' => b'_',
                    c => c.to_ascii_lowercase(),
                }
            })
    };
    if EMAIL_COLUMNS.iter().any(is) {
        Some(IdentifierKind::Email)
    } else if PHONE_COLUMNS.iter().any(is) {
        Some(IdentifierKind::Phone)
    } else if CONTACT_ID_COLUMNS.iter().any(is) {
        Some(IdentifierKind::ContactId)
    } else {
        None
    }
}

/// Whether `name` is acceptable as a column name: starts with a letter or `_`, then
/// letters, digits, `_`, `-`, `.` or spaces, at most [`MAX_COLUMN_NAME_LEN`] bytes. A
/// data row mistaken for a header (an email, a phone number, a number) fails this.
pub fn is_column_name(name: &str) -> bool {
    let name = name.trim();
    let mut chars = name.chars();
    name.len() <= MAX_COLUMN_NAME_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
}

/// Where a row's subject identifiers are, beyond the default column names: for
/// each kind, column names (matched exactly) or JSON pointers (`/contact/email`,
/// RFC 6901; JSON Lines and row batches only, since CSV rows are flat).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierFields {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phone: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact_id: Vec<String>,
}

impl IdentifierFields {
    /// Every declared field with its kind and its place in the request (`email[0]`).
    pub fn fields(&self) -> impl Iterator<Item = (IdentifierKind, String, &str)> {
        [
            (IdentifierKind::Email, "email", &self.email),
            (IdentifierKind::Phone, "phone", &self.phone),
            (IdentifierKind::ContactId, "contact_id", &self.contact_id),
        ]
        .into_iter()
        .flat_map(|(kind, name, list)| {
            list.iter()
                .enumerate()
                .map(move |(i, field)| (kind, format!("{name}[{i}]"), field.as_str()))
        })
    }

    /// Checks every declared field; the error names the offending one (`email[1]`)
    /// and the rule, never echoing the input.
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        if self.fields().count() > MAX_IDENTIFIER_FIELDS {
            return Err((String::new(), "declares more than 16 identifier fields"));
        }
        for (_, place, field) in self.fields() {
            if let Some(pointer) = field.strip_prefix('/') {
                if field.len() > MAX_POINTER_LEN
                    || pointer.split('/').count() > MAX_POINTER_DEPTH
                    || pointer.split('/').any(str::is_empty)
                    || field.chars().any(char::is_control)
                {
                    return Err((
                        place,
                        "must be a JSON pointer of at most 8 non-empty segments and 256 bytes",
                    ));
                }
            } else if !is_column_name(field) {
                return Err((
                    place,
                    "must be a column name or a JSON pointer starting with '/'",
                ));
            }
        }
        Ok(())
    }
}

/// A value in a row that may identify a data subject.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentifierValue<'a> {
    pub kind: IdentifierKind,
    /// Where it was found (`Customer Email`, `contact.email`, `/a/b`), safe to show:
    /// names that are not well-formed column names are `<column>`.
    pub place: std::borrow::Cow<'a, str>,
    pub value: &'a Value,
}

/// The values in `row` that may identify a data subject: columns named as
/// [`subject_kind`] knows (`Email Address`, `Customer Email`, …); one level of nesting
/// (`{"contact": {"email": …, "id": …}}`: the key alone, or joined to its parent as
/// `contact_id`); and the fields the import declared. Used alike when rows are indexed
/// on import and when a data-subject request searches them.
pub fn identifier_values<'a>(
    row: &'a Map<String, Value>,
    declared: Option<&IdentifierFields>,
) -> Vec<IdentifierValue<'a>> {
    let mut found: Vec<IdentifierValue<'a>> = Vec::new();
    for (column, value) in row {
        if let Some(kind) = subject_kind(column) {
            found.push(IdentifierValue {
                kind,
                place: safe_column(column).into(),
                value,
            });
        } else if let Value::Object(nested) = value {
            for (key, inner) in nested {
                let joined = format!("{}_{}", column.trim(), key.trim());
                if let Some(kind) = subject_kind(key).or_else(|| subject_kind(&joined)) {
                    found.push(IdentifierValue {
                        kind,
                        place: format!("{}.{}", safe_column(column), safe_column(key)).into(),
                        value: inner,
                    });
                }
            }
        }
    }
    for (kind, _, field) in declared.into_iter().flat_map(IdentifierFields::fields) {
        let value = match field.strip_prefix('/') {
            // A row is a `Map`, which has no pointer lookup: the first segment picks
            // the column, the rest is looked up inside it.
            Some(rest) => {
                let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
                let column = first.replace("~1", "/").replace("~0", "~");
                row.get(&column).and_then(|v| {
                    if tail.is_empty() {
                        Some(v)
                    } else {
                        v.pointer(&format!("/{tail}"))
                    }
                })
            }
            None => row.get(field),
        };
        if let Some(value) = value
            && !found
                .iter()
                .any(|f| f.kind == kind && std::ptr::eq(f.value, value))
        {
            found.push(IdentifierValue {
                kind,
                place: field.to_owned().into(),
                value,
            });
        }
    }
    found
}

/// What every row must satisfy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowRules {
    /// Columns that must be present and non-empty.
    pub required: Vec<String>,
    pub default_country_code: Option<String>,
    /// Identifier fields declared by the import, beyond the defaults.
    pub identifiers: Option<IdentifierFields>,
}

impl RowRules {
    /// Checks a row and returns the subject identifiers it names, or the broken rule
    /// (naming the column, never the value).
    pub fn check(&self, row: &Map<String, Value>) -> Result<Vec<Identifier>, String> {
        for column in &self.required {
            let present = row.get(column).is_some_and(|value| match value {
                Value::Null => false,
                Value::String(s) => !s.trim().is_empty(),
                _ => true,
            });
            if !present {
                return Err(format!("required column '{column}' is empty or missing"));
            }
        }
        let mut subjects = Vec::new();
        for found in identifier_values(row, self.identifiers.as_ref()) {
            let (kind, place) = (found.kind, &found.place);
            let text: std::borrow::Cow<'_, str> = match found.value {
                Value::String(s) if !s.trim().is_empty() => s.as_str().into(),
                Value::Number(n) if kind != IdentifierKind::Email => n.to_string().into(),
                Value::Null => continue,
                Value::String(_) => continue,
                _ => return Err(format!("column '{place}' must be text")),
            };
            let id = Identifier::new(kind, &text, self.default_country_code.as_deref())
                .map_err(|err| format!("column '{place}': {err}"))?;
            if !subjects.contains(&id) {
                subjects.push(id);
            }
        }
        Ok(subjects)
    }
}

/// Column names come from the caller's file; only well-formed ones are echoed.
fn safe_column(column: &str) -> &str {
    if is_column_name(column) {
        column.trim()
    } else {
        "<column>"
    }
}

// ---------------------------------------------------------------------------------
// Streaming parser
// ---------------------------------------------------------------------------------

/// Why a file as a whole cannot be used. Messages name lines and rules, not values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error("the file has no data rows")]
    NoRows,
    #[error("line 1 must be a header row of column names; column {column} is not a valid name")]
    MissingHeader { column: usize },
    #[error("line 1 repeats a column name (column {column})")]
    DuplicateColumn { column: usize },
    #[error("the header has more than {MAX_COLUMNS} columns")]
    TooManyColumns,
    #[error("required column '{0}' is not in the header")]
    MissingColumn(String),
    #[error("line {line} is not valid UTF-8 text")]
    Encoding { line: u64 },
    #[error("line {line} contains binary data")]
    Binary { line: u64 },
    #[error("line {line}: a quoted field is never closed")]
    UnterminatedQuote { line: u64 },
    #[error("line {line} is longer than {MAX_ROW_BYTES} bytes")]
    RowTooLong { line: u64 },
}

/// A failure while reading rows: the file's fault, or the source's (retry).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the object could not be read: {0}")]
    Read(String),
}

/// One parsed row.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedRow {
    Valid {
        line: u64,
        row: Row,
        subjects: Vec<Identifier>,
    },
    Invalid(LineError),
}

/// What a [`RowReader`] hands out for a valid row besides its subjects: a reader
/// builds only what its caller uses (docs/PERFORMANCE.md, "Import profile").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RowForm {
    /// The row as a JSON object.
    #[default]
    Map,
    /// The row encoded as compact JSON, keys in the order a [`Map`] gives them:
    /// the bytes `serde_json::to_vec` makes of [`RowForm::Map`]'s row. For delivery.
    Json,
    /// Nothing but the subjects: for validation and indexing.
    Subjects,
}

/// A valid row, in the [`RowForm`] its reader was asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Map(Map<String, Value>),
    Json(Vec<u8>),
    Omitted,
}

impl Row {
    /// The row as compact JSON; `None` for an omitted row (its reader was asked for
    /// subjects only), so no caller can deliver an empty row in its place.
    pub fn into_json(self) -> Option<Vec<u8>> {
        match self {
            Row::Json(json) => Some(json),
            Row::Map(map) => Some(map_json(&map)),
            Row::Omitted => None,
        }
    }

    /// The row as a JSON object; `None` for an omitted row.
    pub fn into_map(self) -> Option<Map<String, Value>> {
        match self {
            Row::Map(map) => Some(map),
            Row::Json(json) => serde_json::from_slice(&json).ok(),
            Row::Omitted => None,
        }
    }
}

/// A JSON object as compact JSON. Encoding a `Map` of `Value`s cannot fail (string
/// keys, no non-finite numbers); `{}` stands in only if serde_json ever disagreed.
fn map_json(map: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(map).unwrap_or_else(|_| b"{}".to_vec())
}

/// Size and hash of everything read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub bytes: u64,
    pub sha256: String,
}

/// Wraps the source: hashes and counts every byte, drops a leading UTF-8 BOM, rejects
/// binary bytes, and bounds the length of a record (a CSV record ends at a newline
/// outside quotes; a JSON line at any newline) so memory never grows with a line. It
/// tracks CSV quote state for that, which also tells an unterminated quote at the end.
struct Scanner<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    csv_quotes: bool,
    in_quotes: bool,
    line: u64,
    record_start_line: u64,
    quote_open_line: u64,
    record_bytes: usize,
    at_start: bool,
    pending: Vec<u8>,
}

impl<R: Read> Scanner<R> {
    fn new(inner: R, csv_quotes: bool) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            csv_quotes,
            in_quotes: false,
            line: 1,
            record_start_line: 1,
            quote_open_line: 1,
            record_bytes: 0,
            at_start: true,
            pending: Vec::new(),
        }
    }

    fn fail(error: FileError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    fn check(&mut self, data: &[u8]) -> io::Result<()> {
        for &b in data {
            if matches!(b, 0x00..=0x08 | 0x0e..=0x1f | 0x7f) {
                return Err(Self::fail(FileError::Binary { line: self.line }));
            }
            if self.csv_quotes && b == b'"' {
                self.in_quotes = !self.in_quotes;
                if self.in_quotes {
                    self.quote_open_line = self.line;
                }
            }
            if b == b'\n' {
                self.line += 1;
                if !self.in_quotes {
                    self.record_bytes = 0;
                    self.record_start_line = self.line;
                    continue;
                }
            }
            self.record_bytes += 1;
            if self.record_bytes > MAX_ROW_BYTES {
                return Err(Self::fail(FileError::RowTooLong {
                    line: self.record_start_line,
                }));
            }
        }
        Ok(())
    }

    fn scanned(self) -> Scanned {
        Scanned {
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

impl<R: Read> Scanner<R> {
    fn read_source(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R: Read> Read for Scanner<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.at_start {
            // Look at the first three bytes (which may arrive in pieces) for a BOM.
            self.at_start = false;
            let mut head = [0u8; 3];
            let mut got = 0;
            while got < head.len() {
                let n = self.read_source(&mut head[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let skip = if head[..got] == [0xef, 0xbb, 0xbf] {
                3
            } else {
                0
            };
            self.pending.extend_from_slice(&head[skip..got]);
        }
        let n = if self.pending.is_empty() {
            self.read_source(buf)?
        } else {
            let n = self.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            n
        };
        if n == 0 {
            if self.in_quotes {
                return Err(Self::fail(FileError::UnterminatedQuote {
                    line: self.quote_open_line,
                }));
            }
            return Ok(0);
        }
        self.check(&buf[..n])?;
        Ok(n)
    }
}

/// Maps an I/O error out of the scanner (or the source under it) to a [`ParseError`].
fn parse_error(err: io::Error) -> ParseError {
    if err.kind() == io::ErrorKind::InvalidData
        && err.get_ref().is_some_and(|inner| inner.is::<FileError>())
    {
        if let Some(inner) = err.into_inner()
            && let Ok(file) = inner.downcast::<FileError>()
        {
            return ParseError::File(*file);
        }
        return ParseError::Read("invalid data".into());
    }
    ParseError::Read(err.to_string())
}

enum Engine<R: Read> {
    Csv {
        reader: Box<csv::Reader<Scanner<R>>>,
        headers: Vec<String>,
        /// Made from the header, once per file.
        plan: Option<CsvPlan>,
        record: csv::ByteRecord,
    },
    Jsonl {
        reader: Box<BufReader<Scanner<R>>>,
        line: u64,
        buf: Vec<u8>,
    },
}

/// Where [`RowRules::check`] looks in a CSV row, worked out once from the header
/// rather than for every row: CSV rows are flat text, so which columns are required
/// and which hold identifiers depends on the header alone.
#[derive(Debug)]
struct CsvPlan {
    /// Column indexes in the order a [`Map`] of the row iterates (by name).
    sorted: Vec<usize>,
    /// Each required column by name, with its index (`None`: not in the header).
    required: Vec<(String, Option<usize>)>,
    /// The identifier columns in the order [`identifier_values`] finds them: index,
    /// kind, and the place an error names.
    identifiers: Vec<(usize, IdentifierKind, String)>,
}

impl CsvPlan {
    fn new(headers: &[String], rules: &RowRules) -> Self {
        let mut sorted: Vec<usize> = (0..headers.len()).collect();
        sorted.sort_by(|a, b| headers[*a].cmp(&headers[*b]));
        // The same function the row-by-row check runs, over a row whose every value
        // is its own column index: what it finds is where it would look.
        let probe: Map<String, Value> = headers
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), Value::String(i.to_string())))
            .collect();
        let identifiers = identifier_values(&probe, rules.identifiers.as_ref())
            .into_iter()
            .filter_map(|found| match found.value {
                Value::String(index) => index
                    .parse()
                    .ok()
                    .map(|i| (i, found.kind, found.place.into_owned())),
                _ => None,
            })
            .collect();
        let required = rules
            .required
            .iter()
            .map(|name| (name.clone(), headers.iter().position(|h| h == name)))
            .collect();
        Self {
            sorted,
            required,
            identifiers,
        }
    }

    /// [`RowRules::check`] of the row these fields make, without making it.
    fn check(&self, rules: &RowRules, fields: &[&str]) -> Result<Vec<Identifier>, String> {
        for (name, index) in &self.required {
            if !index.is_some_and(|i| fields.get(i).is_some_and(|f| !f.trim().is_empty())) {
                return Err(format!("required column '{name}' is empty or missing"));
            }
        }
        let mut subjects = Vec::new();
        for (index, kind, place) in &self.identifiers {
            let Some(text) = fields.get(*index).filter(|f| !f.trim().is_empty()) else {
                continue;
            };
            let id = Identifier::new(*kind, text, rules.default_country_code.as_deref())
                .map_err(|err| format!("column '{place}': {err}"))?;
            if !subjects.contains(&id) {
                subjects.push(id);
            }
        }
        Ok(subjects)
    }

    /// The row in `form`.
    fn row(&self, form: RowForm, headers: &[String], fields: &[&str]) -> Row {
        match form {
            RowForm::Map => Row::Map(
                headers
                    .iter()
                    .zip(fields)
                    .map(|(name, value)| (name.clone(), Value::String((*value).to_owned())))
                    .collect(),
            ),
            RowForm::Json => {
                let size: usize = headers
                    .iter()
                    .zip(fields)
                    .map(|(h, f)| h.len() + f.len() + 6)
                    .sum();
                let mut json = Vec::with_capacity(size + 2);
                json.push(b'{');
                for (n, &i) in self.sorted.iter().enumerate() {
                    if n > 0 {
                        json.push(b',');
                    }
                    write_json_str(&mut json, &headers[i]);
                    json.push(b':');
                    write_json_str(&mut json, fields[i]);
                }
                json.push(b'}');
                Row::Json(json)
            }
            RowForm::Subjects => Row::Omitted,
        }
    }
}

/// `s` as a JSON string, escaped exactly as serde_json escapes it.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    let mut ser = serde_json::Serializer::new(out);
    // Writing a string into a Vec cannot fail.
    let _ = serde::Serializer::serialize_str(&mut ser, s);
}

/// Reads rows from any byte source, one at a time: memory holds one record.
pub struct RowReader<R: Read> {
    engine: Option<Engine<R>>,
    format: Format,
    rules: RowRules,
    form: RowForm,
    rows: u64,
    finished: bool,
}

impl<R: Read> RowReader<R> {
    pub fn new(source: R, format: Format, rules: RowRules) -> Self {
        let format = format.object_format();
        Self {
            engine: None,
            format,
            rules,
            form: RowForm::Map,
            rows: 0,
            finished: false,
        }
        .with_source(source)
    }

    /// Valid rows come out in `form` (by default [`RowForm::Map`]).
    pub fn with_form(mut self, form: RowForm) -> Self {
        self.form = form;
        self
    }

    fn with_source(mut self, source: R) -> Self {
        let engine = match self.format {
            Format::Csv => Engine::Csv {
                reader: Box::new(
                    csv::ReaderBuilder::new()
                        .has_headers(false)
                        .flexible(true)
                        // Records end at LF only (a CR before it is dropped below):
                        // with CRLF as terminator the csv crate counts a record's
                        // line before consuming the previous LF, one line short.
                        .terminator(csv::Terminator::Any(b'\n'))
                        .from_reader(Scanner::new(source, true)),
                ),
                headers: Vec::new(),
                plan: None,
                record: csv::ByteRecord::new(),
            },
            Format::Jsonl | Format::Rows => Engine::Jsonl {
                reader: Box::new(BufReader::new(Scanner::new(source, false))),
                line: 0,
                buf: Vec::new(),
            },
        };
        self.engine = Some(engine);
        self
    }

    /// Size and SHA-256 of what was read; call after the last row.
    pub fn scanned(self) -> Option<Scanned> {
        match self.engine? {
            Engine::Csv { reader, .. } => Some(reader.into_inner().scanned()),
            Engine::Jsonl { reader, .. } => Some(reader.into_inner().scanned()),
        }
    }

    fn bytes_read(&self) -> u64 {
        match &self.engine {
            Some(Engine::Csv { reader, .. }) => reader.get_ref().bytes,
            Some(Engine::Jsonl { reader, .. }) => reader.get_ref().bytes,
            None => 0,
        }
    }

    fn next_row(&mut self) -> Result<Option<ParsedRow>, ParseError> {
        let rules = &self.rules;
        let form = self.form;
        match self.engine.as_mut() {
            None => Ok(None),
            Some(Engine::Csv {
                reader,
                headers,
                plan,
                record,
            }) => loop {
                let more = reader.read_byte_record(record).map_err(csv_error)?;
                if !more {
                    return Ok(None);
                }
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                let mut fields = record
                    .iter()
                    .map(std::str::from_utf8)
                    .collect::<Result<Vec<&str>, _>>()
                    .map_err(|_| FileError::Encoding { line })?;
                if let Some(last) = fields.last_mut() {
                    *last = last.strip_suffix('\r').unwrap_or(last);
                }
                if fields.len() == 1 && fields[0].is_empty() {
                    // A blank CRLF line.
                    continue;
                }
                if headers.is_empty() {
                    *headers = read_header(&fields, &rules.required)?;
                    *plan = Some(CsvPlan::new(headers, rules));
                    continue;
                }
                if fields.len() != headers.len() {
                    return Ok(Some(ParsedRow::Invalid(LineError {
                        batch: None,
                        line,
                        message: format!(
                            "has {} fields; the header has {}",
                            fields.len(),
                            headers.len()
                        ),
                    })));
                }
                let plan = plan.get_or_insert_with(|| CsvPlan::new(headers, rules));
                return Ok(Some(match plan.check(rules, &fields) {
                    Ok(subjects) => ParsedRow::Valid {
                        line,
                        row: plan.row(form, headers, &fields),
                        subjects,
                    },
                    Err(message) => invalid(line, message),
                }));
            },
            Some(Engine::Jsonl { reader, line, buf }) => loop {
                buf.clear();
                let n = reader.read_until(b'\n', buf).map_err(parse_error)?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                let line = *line;
                let text = std::str::from_utf8(buf).map_err(|_| FileError::Encoding { line })?;
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let parsed = match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(row)) => checked(rules, form, line, row),
                    Ok(_) => invalid(line, "is not a JSON object".into()),
                    Err(err) => {
                        invalid(line, format!("is not valid JSON (column {})", err.column()))
                    }
                };
                return Ok(Some(parsed));
            },
        }
    }
}

fn invalid(line: u64, message: String) -> ParsedRow {
    ParsedRow::Invalid(LineError {
        batch: None,
        line,
        message,
    })
}

fn checked(rules: &RowRules, form: RowForm, line: u64, row: Map<String, Value>) -> ParsedRow {
    match rules.check(&row) {
        Ok(subjects) => ParsedRow::Valid {
            line,
            row: match form {
                RowForm::Map => Row::Map(row),
                RowForm::Json => Row::Json(map_json(&row)),
                RowForm::Subjects => Row::Omitted,
            },
            subjects,
        },
        Err(message) => invalid(line, message),
    }
}

fn csv_error(err: csv::Error) -> ParseError {
    match err.into_kind() {
        csv::ErrorKind::Io(io) => parse_error(io),
        other => ParseError::Read(format!("{other:?}")),
    }
}

fn read_header(fields: &[&str], required: &[String]) -> Result<Vec<String>, FileError> {
    if fields.len() > MAX_COLUMNS {
        return Err(FileError::TooManyColumns);
    }
    let mut names: Vec<String> = Vec::with_capacity(fields.len());
    for (index, field) in fields.iter().enumerate() {
        if !is_column_name(field) {
            return Err(FileError::MissingHeader { column: index + 1 });
        }
        let name = field.trim().to_owned();
        if names
            .iter()
            .any(|seen| normalise_column(seen) == normalise_column(&name))
        {
            return Err(FileError::DuplicateColumn { column: index + 1 });
        }
        names.push(name);
    }
    if let Some(missing) = required.iter().find(|r| !names.contains(r)) {
        return Err(FileError::MissingColumn(missing.clone()));
    }
    Ok(names)
}

impl<R: Read> Iterator for RowReader<R> {
    type Item = Result<ParsedRow, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.next_row() {
            Ok(Some(row)) => {
                self.rows += 1;
                Some(Ok(row))
            }
            Ok(None) => {
                self.finished = true;
                if self.rows == 0 {
                    let empty = self.bytes_read() == 0
                        || matches!(&self.engine, Some(Engine::Csv { headers, .. }) if headers.is_empty());
                    let error = if empty {
                        FileError::Empty
                    } else {
                        FileError::NoRows
                    };
                    return Some(Err(error.into()));
                }
                None
            }
            Err(err) => {
                self.finished = true;
                Some(Err(err))
            }
        }
    }
}

/// `Read` over an S3 body, for the parser on a blocking thread: each chunk is awaited
/// on the runtime, so only one chunk is in memory at a time.
struct BlockingBody {
    handle: tokio::runtime::Handle,
    body: ByteStream,
    chunk: bytes::Bytes,
}

impl Read for BlockingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.body.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(err)) => return Err(io::Error::other(err.to_string())),
            }
        }
        let n = self.chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// Rows handed from the parsing thread in chunks of at most this many rows…
const CHUNK_ROWS: usize = 128;
/// …or of rows read from at most this many bytes, whichever comes first.
const CHUNK_BYTES: u64 = 256 * 1024;
/// Chunks waiting for the consumer: with the one being filled and the one being
/// consumed, about 4 × 128 rows are in memory at once.
const CHUNKS_IN_FLIGHT: usize = 2;

/// The receiving end of [`stream_rows`]: rows in file order, the failure (if any)
/// last.
pub struct RowStream {
    rx: tokio::sync::mpsc::Receiver<Vec<Result<ParsedRow, ParseError>>>,
    chunk: std::vec::IntoIter<Result<ParsedRow, ParseError>>,
}

impl RowStream {
    /// The next row, or `None` once the file (or the parse) ended.
    pub async fn recv(&mut self) -> Option<Result<ParsedRow, ParseError>> {
        loop {
            if let Some(item) = self.chunk.next() {
                return Some(item);
            }
            self.chunk = self.rx.recv().await?.into_iter();
        }
    }
}

/// Parses an S3 body on a blocking thread and hands rows over a bounded channel (so
/// a slow consumer — a webhook — holds back reading). Rows cross in chunks: one
/// hand-over per row cost more than parsing the row (docs/PERFORMANCE.md). The join
/// handle gives the size and hash once everything was read, or `None` if the
/// consumer stopped early or the parse failed (the failure is the last item).
pub fn stream_rows(
    body: ByteStream,
    format: Format,
    rules: RowRules,
    form: RowForm,
) -> (RowStream, tokio::task::JoinHandle<Option<Scanned>>) {
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let source = BlockingBody {
            handle,
            body,
            chunk: bytes::Bytes::new(),
        };
        let mut rows = RowReader::new(source, format, rules).with_form(form);
        let mut chunk = Vec::with_capacity(CHUNK_ROWS);
        let mut chunk_from = 0;
        while let Some(item) = rows.next() {
            let failed = item.is_err();
            chunk.push(item);
            let read = rows.bytes_read();
            if failed || chunk.len() == CHUNK_ROWS || read - chunk_from >= CHUNK_BYTES {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
                chunk_from = read;
                if tx.blocking_send(full).is_err() || failed {
                    return None;
                }
            }
        }
        if !chunk.is_empty() && tx.blocking_send(chunk).is_err() {
            return None;
        }
        rows.scanned()
    });
    (
        RowStream {
            rx,
            chunk: Vec::new().into_iter(),
        },
        task,
    )
}

// ---------------------------------------------------------------------------------
// Store and bucket operations
// ---------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("import not found")]
    NotFound,
    #[error("the import is {0}, which does not allow this")]
    State(Status),
    #[error("the import was changed concurrently too often; try again")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("S3 call failed: {0}")]
    S3(String),
    /// The pseudonym secret could not be read: ours, a 500.
    #[error(transparent)]
    Secret(#[from] crate::domain::subject::SubjectError),
}

impl HttpError for ImportError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            ImportError::NotFound => HttpAnswer::not_found(),
            ImportError::State(_) | ImportError::Contended => {
                HttpAnswer::conflict(self.to_string())
            }
            ImportError::Store(e) => e.answer(),
            ImportError::S3(_) => HttpAnswer::internal_logged("import storage error", self),
            ImportError::Secret(_) => {
                HttpAnswer::internal_logged("pseudonym secret unreadable", self)
            }
        }
    }
}

/// What deleting an import's data removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub object_versions: u64,
    pub index_entries: u64,
}

impl std::ops::AddAssign for Purged {
    fn add_assign(&mut self, other: Self) {
        self.object_versions += other.object_versions;
        self.index_entries += other.index_entries;
    }
}

/// A current object under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub version_id: Option<String>,
    pub size: i64,
}

/// Imports in the table and the bucket.
#[derive(Debug, Clone)]
pub struct Imports {
    store: Store,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

/// Distinct subjects collected before their refs are written out.
const MAX_PENDING_SUBJECTS: usize = 10_000;
/// Concurrent DynamoDB/S3 calls when writing or deleting many items.
const WRITE_CONCURRENCY: usize = 8;
/// Attempts of an optimistic update before giving up.
const MAX_UPDATE_ATTEMPTS: usize = 10;

impl Imports {
    pub fn new(store: Store, s3: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            store,
            s3,
            bucket: bucket.into(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The import as stored, for writers (processing, delivery, deletion, expiry).
    /// Readers use [`Imports::read`], [`Imports::list`] and [`Imports::data_readable`],
    /// which apply the retention.
    pub async fn get(&self, tenant: &TenantId, id: &str) -> Result<Option<Import>, ImportError> {
        if !is_import_id(id) {
            return Ok(None);
        }
        Ok(self.store.get(&Import::key_of(tenant, id)).await?)
    }

    /// The import as a reader sees it now ([`Import::seen_at`]): `expired` once its
    /// data is past its retention, though the platform deletes the data later.
    pub async fn read(&self, tenant: &TenantId, id: &str) -> Result<Option<Import>, ImportError> {
        let now = self.store.clock().now();
        Ok(self
            .get(tenant, id)
            .await?
            .map(|import| import.seen_at(now)))
    }

    /// Whether an import's stored data may be read now (for an access bundle): not
    /// once it is past its retention or gone. Data no import item accounts for is
    /// judged by its own subject refs' expiry, which the store already filters.
    pub async fn data_readable(&self, tenant: &TenantId, id: &str) -> Result<bool, ImportError> {
        let now = self.store.clock().now();
        Ok(match self.get(tenant, id).await? {
            Some(import) => !import.past_retention(now) && !import.status.is_gone(),
            None => true,
        })
    }

    pub async fn create(&self, import: &Import) -> Result<(), ImportError> {
        Ok(self.store.create(import).await?)
    }

    /// Newest first, leaving out imports past their retention ([`Import::past_retention`]),
    /// whether or not the platform has deleted their data yet. A page may so hold
    /// fewer than `limit` imports; its cursor still continues after it.
    pub async fn list(
        &self,
        tenant: &TenantId,
        limit: Option<i32>,
        cursor: Option<String>,
    ) -> Result<Page<Import>, ImportError> {
        let request = PageRequest {
            limit,
            cursor,
            descending: true,
        };
        let mut page: Page<Import> = self
            .store
            .query(&keys::tenant(tenant), &keys::import(""), &request)
            .await?;
        let now = self.store.clock().now();
        page.items.retain(|import| !import.past_retention(now));
        Ok(page)
    }

    /// Every import of the tenant, past its retention or not: for deletion, which
    /// must reach data the platform has not deleted yet.
    pub async fn all(&self, tenant: &TenantId) -> Result<Vec<Import>, ImportError> {
        Ok(self
            .store
            .query_all(&keys::tenant(tenant), &keys::import(""))
            .await?)
    }

    /// Read-modify-write under the import's revision: `change` sees the current item
    /// and may refuse (its error is returned); a concurrent writer makes it run again
    /// on the fresh item. Returns the item as written.
    pub async fn update<F>(
        &self,
        tenant: &TenantId,
        id: &str,
        mut change: F,
    ) -> Result<Import, ImportError>
    where
        F: FnMut(&mut Import) -> Result<(), ImportError>,
    {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let Some(current) = self.get(tenant, id).await? else {
                return Err(ImportError::NotFound);
            };
            let mut next = current.clone();
            change(&mut next)?;
            if next == current {
                return Ok(current);
            }
            next.revision = current.revision + 1;
            next.updated_at = self.store.clock().now();
            let condition = Condition::new("#rev = :rev")
                .name("#rev", "revision")
                .value(":rev", AttributeValue::N(current.revision.to_string()));
            match self.store.put_if(&next, condition).await {
                Ok(()) => return Ok(next),
                Err(StoreError::ConditionFailed) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ImportError::Contended)
    }

    /// Tags an object version with its retention class (lifecycle rules select on it).
    pub async fn tag_object(
        &self,
        key: &str,
        version_id: Option<&str>,
        class: RetentionClass,
    ) -> Result<(), ImportError> {
        let tag = Tag::builder()
            .key(S3_TAG_KEY)
            .value(class.name())
            .build()
            .map_err(|e| ImportError::S3(e.to_string()))?;
        let tagging = Tagging::builder()
            .tag_set(tag)
            .build()
            .map_err(|e| ImportError::S3(e.to_string()))?;
        self.s3
            .put_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| ImportError::S3(error_text(&e)))?;
        Ok(())
    }

    /// The `x-amz-tagging` value for a class.
    pub fn tagging_header(class: RetentionClass) -> String {
        format!("{S3_TAG_KEY}={}", class.name())
    }

    /// Records that the import holds data until `expires_at` (keeps the latest).
    pub async fn record_data_expiry(
        &self,
        tenant: &TenantId,
        import_id: &str,
        class: RetentionClass,
        expires_at: i64,
    ) -> Result<(), ImportError> {
        let marker = ImportData {
            tenant: tenant.clone(),
            import_id: import_id.to_owned(),
            retention_class: class,
            expires_at,
        };
        let condition = Condition::new("attribute_not_exists(pk) OR #exp < :exp")
            .name("#exp", crate::kernel::retention::TTL_ATTRIBUTE)
            .value(":exp", AttributeValue::N(expires_at.to_string()));
        match self.store.put_if(&marker, condition).await {
            Ok(()) | Err(StoreError::ConditionFailed) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Writes the refs of `object`: `count` rows per pseudonym, each expiring at
    /// `expires_at`. `first_round` writes whole items in batches (the object's refs
    /// were deleted before indexing began, so none exists yet); later rounds of a
    /// large file add to the counts of refs an earlier round may have written.
    pub async fn add_subject_refs(
        &self,
        object: &ObjectKey,
        counts: HashMap<Pseudonym, u64>,
        expires_at: i64,
        first_round: bool,
    ) -> Result<(), ImportError> {
        let refs: Vec<SubjectRef> = counts
            .into_iter()
            .map(|(pseudonym, count)| SubjectRef {
                tenant: object.tenant.clone(),
                pseudonym: pseudonym.to_string(),
                source: Source::ImportObject,
                source_id: object.ref_source_id(),
                object_key: Some(object.key()),
                count,
                expires_at: Some(expires_at),
            })
            .collect();
        if first_round {
            let chunks: Vec<&[SubjectRef]> =
                refs.chunks(crate::kernel::store::BATCH_WRITE).collect();
            let mut results =
                futures_util::stream::iter(chunks.into_iter().map(|c| self.put_refs(c)))
                    .buffer_unordered(WRITE_CONCURRENCY);
            while let Some(result) = results.next().await {
                result?;
            }
            return Ok(());
        }
        let mut results = futures_util::stream::iter(refs.iter().map(|r| self.add_ref(r)))
            .buffer_unordered(WRITE_CONCURRENCY);
        while let Some(result) = results.next().await {
            result?;
        }
        Ok(())
    }

    async fn put_refs(&self, refs: &[SubjectRef]) -> Result<(), ImportError> {
        Ok(self.store.put_all(refs).await?)
    }

    async fn add_ref(&self, subject_ref: &SubjectRef) -> Result<(), ImportError> {
        let item = Store::encode(subject_ref)?;
        let mut sets = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (i, (name, value)) in item.into_iter().enumerate() {
            if matches!(name.as_str(), "pk" | "sk" | "count") {
                continue;
            }
            sets.push(format!("#a{i} = :v{i}"));
            names.insert(format!("#a{i}"), name);
            values.insert(format!(":v{i}"), value);
        }
        names.insert("#count".into(), "count".into());
        values.insert(
            ":count".into(),
            AttributeValue::N(subject_ref.count.to_string()),
        );
        let key = subject_ref.key();
        self.store
            .client()
            .update_item()
            .table_name(self.store.table())
            .key("pk", AttributeValue::S(key.pk))
            .key("sk", AttributeValue::S(key.sk))
            .update_expression(format!("SET {} ADD #count :count", sets.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| StoreError::Dynamo(error_text(&e)))?;
        Ok(())
    }

    /// Deletes every subject ref of the tenant whose sort key starts with `sk_prefix`,
    /// expired or not (an expired ref is invisible to reads, but must not outlive a
    /// delete request either). Returns how many were deleted.
    pub async fn delete_refs(
        &self,
        tenant: &TenantId,
        sk_prefix: &str,
    ) -> Result<u64, ImportError> {
        let pk = keys::tenant(tenant);
        let mut start = None;
        let mut deleted = 0;
        loop {
            let out = self
                .store
                .client()
                .query()
                .table_name(self.store.table())
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                .expression_attribute_values(":prefix", AttributeValue::S(sk_prefix.to_owned()))
                .projection_expression("pk, sk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| StoreError::Dynamo(error_text(&e)))?;
            let keys: Vec<Key> = out
                .items
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| {
                    let pk = item.get("pk")?.as_s().ok()?.clone();
                    let sk = item.get("sk")?.as_s().ok()?.clone();
                    Some(Key::new(pk, sk))
                })
                .collect();
            deleted += keys.len() as u64;
            let mut deletes =
                futures_util::stream::iter(keys.iter().map(|key| self.store.delete(key)))
                    .buffer_unordered(WRITE_CONCURRENCY);
            while let Some(result) = deletes.next().await {
                result?;
            }
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(deleted),
            }
        }
    }

    /// Deletes every version and delete marker under `prefix`. Returns how many.
    pub async fn delete_versions(&self, prefix: &str) -> Result<u64, ImportError> {
        let mut deleted = 0;
        loop {
            let out = self
                .s3
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys(1000)
                .send()
                .await
                .map_err(|e| ImportError::S3(error_text(&e)))?;
            let mut objects = Vec::new();
            for version in out.versions() {
                if let Some(key) = version.key() {
                    objects.push((key.to_owned(), version.version_id().map(str::to_owned)));
                }
            }
            for marker in out.delete_markers() {
                if let Some(key) = marker.key() {
                    objects.push((key.to_owned(), marker.version_id().map(str::to_owned)));
                }
            }
            if objects.is_empty() {
                return Ok(deleted);
            }
            let identifiers = objects
                .iter()
                .map(|(key, version)| {
                    ObjectIdentifier::builder()
                        .key(key)
                        .set_version_id(version.clone())
                        .build()
                        .map_err(|e| ImportError::S3(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(identifiers))
                .quiet(true)
                .build()
                .map_err(|e| ImportError::S3(e.to_string()))?;
            let result = self
                .s3
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| ImportError::S3(error_text(&e)))?;
            if let Some(failed) = result.errors().first() {
                return Err(ImportError::S3(format!(
                    "{} object versions could not be deleted ({})",
                    result.errors().len(),
                    failed.code().unwrap_or("unknown error")
                )));
            }
            deleted += objects.len() as u64;
        }
    }

    /// The current objects under `prefix`, in key order.
    pub async fn current_objects(&self, prefix: &str) -> Result<Vec<StoredObject>, ImportError> {
        let mut objects = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| ImportError::S3(error_text(&e)))?;
            for object in out.contents() {
                if let Some(key) = object.key() {
                    objects.push(StoredObject {
                        key: key.to_owned(),
                        version_id: None,
                        size: object.size().unwrap_or(0),
                    });
                }
            }
            match out.next_continuation_token() {
                Some(next) if out.is_truncated().unwrap_or(false) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Deletes all of an import's data: every object version, every subject ref and
    /// the data marker. The import item (metadata) stays.
    pub async fn purge(&self, tenant: &TenantId, import_id: &str) -> Result<Purged, ImportError> {
        let object_versions = self
            .delete_versions(&import_prefix(tenant, import_id))
            .await?;
        let index_entries = self
            .delete_refs(tenant, &import_refs_prefix(import_id))
            .await?;
        self.store
            .delete(&Key::new(
                keys::tenant(tenant),
                keys::import_data(import_id),
            ))
            .await?;
        Ok(Purged {
            object_versions,
            index_entries,
        })
    }
}

/// Counts rows per subject pseudonym and writes the refs in rounds, so memory stays
/// bounded however many distinct subjects a file names.
pub struct SubjectCounter<'a> {
    imports: &'a Imports,
    key: &'a PseudonymKey,
    object: ObjectKey,
    expires_at: i64,
    /// Counted by identifier: the pseudonym (an HMAC) is computed once per distinct
    /// subject at [`Self::flush`], not once per row (a file names the same people
    /// over and over; docs/PERFORMANCE.md, "Import profile").
    counts: HashMap<Identifier, u64>,
    rounds: u32,
}

impl<'a> SubjectCounter<'a> {
    pub fn new(
        imports: &'a Imports,
        key: &'a PseudonymKey,
        object: ObjectKey,
        expires_at: i64,
    ) -> Self {
        Self {
            imports,
            key,
            object,
            expires_at,
            counts: HashMap::new(),
            rounds: 0,
        }
    }

    pub async fn add(&mut self, subjects: &[Identifier]) -> Result<(), ImportError> {
        // A row naming one person in two columns (email and phone) counts once per
        // identifier: each identifier is its own index entry.
        for subject in subjects {
            match self.counts.get_mut(subject) {
                Some(count) => *count += 1,
                None => {
                    self.counts.insert(subject.clone(), 1);
                }
            }
        }
        if self.counts.len() >= MAX_PENDING_SUBJECTS {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ImportError> {
        // Distinct identifiers have distinct pseudonyms, so no two counts merge here.
        let counts = std::mem::take(&mut self.counts)
            .into_iter()
            .map(|(subject, count)| (self.key.pseudonym(&subject), count))
            .collect();
        let first_round = self.rounds == 0;
        self.rounds += 1;
        self.imports
            .add_subject_refs(&self.object, counts, self.expires_at, first_round)
            .await
    }
}

// ---------------------------------------------------------------------------------
// Suppressed subjects at delivery
// ---------------------------------------------------------------------------------

/// Rows a push left out, by reason. Counts only: which rows they were, and what they
/// held, is recorded nowhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeftOut {
    pub restricted: u64,
    pub consent_withdrawn: u64,
}

impl LeftOut {
    pub fn add(&mut self, reason: Reason) {
        match reason {
            Reason::Restricted => self.restricted += 1,
            Reason::ConsentWithdrawn => self.consent_withdrawn += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.restricted + self.consent_withdrawn
    }
}

/// Which rows a push leaves out: the tenant's suppressed subjects
/// ([`Suppressed::load`], once per delivery or row batch, never per row), tested
/// against each row's pseudonyms, computed with the tenant's key from the identifiers
/// [`RowRules::check`] found — exactly as [`SubjectCounter`] indexes the row. With
/// nobody suppressed no pseudonym is computed.
#[derive(Debug)]
pub struct RowFilter {
    suppressed: Suppressed,
    /// Only when someone is suppressed.
    key: Option<PseudonymKey>,
}

impl RowFilter {
    /// Loads the list for `purpose` (restricted subjects, and with a purpose those
    /// who withdrew consent for it).
    /// The secret is read only when someone is suppressed: most deliveries never
    /// need a pseudonym.
    pub async fn load(
        store: &Store,
        app_secret: &crate::domain::subject::AppSecret,
        tenant: &TenantId,
        purpose: Option<&str>,
    ) -> Result<Self, ImportError> {
        let suppressed = Suppressed::load(store, tenant, purpose).await?;
        if suppressed.is_empty() {
            return Ok(Self {
                suppressed,
                key: None,
            });
        }
        Ok(Self::new(suppressed, app_secret.get().await?, tenant))
    }

    pub fn new(suppressed: Suppressed, app_secret: &SecretSlice<u8>, tenant: &TenantId) -> Self {
        let key = (!suppressed.is_empty()).then(|| PseudonymKey::derive(app_secret, tenant));
        Self { suppressed, key }
    }

    /// Why the row naming `subjects` is left out, if it is.
    pub fn reason(&self, subjects: &[Identifier]) -> Option<Reason> {
        let key = self.key.as_ref()?;
        let pseudonyms: Vec<Pseudonym> = subjects.iter().map(|s| key.pseudonym(s)).collect();
        self.suppressed
            .reason(pseudonyms.iter().map(Pseudonym::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(format: Format, input: &[u8], rules: RowRules) -> Vec<Result<ParsedRow, ParseError>> {
        RowReader::new(input, format, rules).collect()
    }

    fn valid_rows(items: &[Result<ParsedRow, ParseError>]) -> Vec<(u64, Map<String, Value>)> {
        items
            .iter()
            .filter_map(|item| match item {
                Ok(ParsedRow::Valid { line, row, .. }) => {
                    Some((*line, row.clone().into_map().unwrap_or_default()))
                }
                _ => None,
            })
            .collect()
    }

    fn fatal(items: &[Result<ParsedRow, ParseError>]) -> Option<FileError> {
        items.iter().find_map(|item| match item {
            Err(ParseError::File(err)) => Some(err.clone()),
            _ => None,
        })
    }

    #[test]
    fn csv_with_bom_crlf_and_quotes() {
        let input = "\u{feff}name,email,note\r\nJane,jane@example.com,\"multi\r\nline, with comma\"\r\nJoe,joe@example.com,\"say \"\"hi\"\"\"\r\n";
        let items = parse(Format::Csv, input.as_bytes(), RowRules::default());
        let rows = valid_rows(&items);
        assert_eq!(rows.len(), 2, "{items:?}");
        assert_eq!(rows[0].0, 2);
        assert_eq!(rows[0].1["name"], "Jane");
        assert_eq!(rows[0].1["note"], "multi\r\nline, with comma");
        assert_eq!(rows[1].0, 4);
        assert_eq!(rows[1].1["note"], "say \"hi\"");
    }

    /// The CSV reader checks rows through a plan made once from the header, and
    /// builds only the form asked for: every form must find what `RowRules::check`
    /// finds on the row as a map (same subjects, same errors, same lines), and the
    /// JSON form must be the very bytes serde_json makes of the map.
    #[test]
    fn csv_rows_in_every_form_check_and_encode_as_the_map_does() {
        let files = [
            // Aliased identifier columns out of name order, a required column, quotes,
            // escapes, non-ASCII, an empty identifier, a bad email and phone.
            "Zip,Customer Email,name,Mobile Phone,contactId,note\n\
             1,A@Example.com,Ann,+44 7700 900123,c1,\"say \"\"hi\"\"\"\n\
             2,,Bob,07700 900123,,tab\there\n\
             3,not-an-email,Cy,,c3,ünïcode ✓\n\
             4,d@example.com,,+1 202 555 0100,c4,\"line\nbreak\"\n\
             5,e@example.com,Eve,12,c5,back\\slash\n",
            // Declared fields: a column, a pointer to a column, a pointer into text
            // (never found in CSV), duplicates of a default column.
            "who,email,alt,Phone\nx@example.com,y@example.com,z@example.com,+442079460000\n\
             ,Y@EXAMPLE.COM,,\nbad,y@example.com,,\n",
        ];
        let rules = [
            RowRules {
                required: vec!["name".into()],
                default_country_code: Some("44".into()),
                identifiers: None,
            },
            RowRules {
                required: vec![],
                default_country_code: None,
                identifiers: Some(IdentifierFields {
                    email: vec!["who".into(), "/alt".into(), "/who/x".into(), "email".into()],
                    phone: vec!["/Phone".into()],
                    contact_id: vec![],
                }),
            },
        ];
        for (file, rules) in files.iter().zip(rules) {
            let read = |form| {
                RowReader::new(file.as_bytes(), Format::Csv, rules.clone())
                    .with_form(form)
                    .collect::<Vec<_>>()
            };
            let maps = read(RowForm::Map);
            let (json, subjects) = (read(RowForm::Json), read(RowForm::Subjects));
            assert_eq!(maps.len(), json.len());
            assert_eq!(maps.len(), subjects.len());
            let mut valid = 0;
            for ((map, json), only) in maps.iter().zip(&json).zip(&subjects) {
                match (map, json, only) {
                    (
                        Ok(ParsedRow::Valid {
                            line,
                            row: Row::Map(row),
                            subjects: s,
                        }),
                        Ok(ParsedRow::Valid {
                            line: l2,
                            row: Row::Json(bytes),
                            subjects: s2,
                        }),
                        Ok(ParsedRow::Valid {
                            line: l3,
                            row: Row::Omitted,
                            subjects: s3,
                        }),
                    ) => {
                        valid += 1;
                        assert_eq!((line, line), (l2, l3));
                        assert_eq!(&rules.check(row).unwrap(), s);
                        assert_eq!((s, s), (s2, s3));
                        assert_eq!(bytes, &serde_json::to_vec(row).unwrap(), "line {line}");
                    }
                    (a, b, c) => {
                        assert!(!matches!(a, Ok(ParsedRow::Valid { .. })), "{a:?}");
                        assert_eq!(format!("{a:?}"), format!("{b:?}"));
                        assert_eq!(format!("{a:?}"), format!("{c:?}"));
                    }
                }
            }
            assert!(valid >= 2, "{maps:?}");
            assert!(maps.iter().any(|m| matches!(m, Ok(ParsedRow::Invalid(_)))));
        }
    }

    #[test]
    fn csv_row_errors_are_reported_by_line() {
        let input = "email,name\nnot-an-email,A\nb@example.com\nc@example.com,C\n";
        let items = parse(
            Format::Csv,
            input.as_bytes(),
            RowRules {
                required: vec!["name".into()],
                default_country_code: None,
                identifiers: None,
            },
        );
        let errors: Vec<&LineError> = items
            .iter()
            .filter_map(|i| match i {
                Ok(ParsedRow::Invalid(e)) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].message.contains("email"));
        assert!(!errors[0].message.contains("not-an-email"));
        assert_eq!(errors[1].line, 3);
        assert_eq!(valid_rows(&items).len(), 1);
    }

    #[test]
    fn fatal_file_errors() {
        let cases: Vec<(Format, Vec<u8>, FileError)> = vec![
            (Format::Csv, b"".to_vec(), FileError::Empty),
            (Format::Jsonl, b"".to_vec(), FileError::Empty),
            (Format::Csv, b"name,email\n".to_vec(), FileError::NoRows),
            (
                Format::Csv,
                b"jane@example.com,Jane\n".to_vec(),
                FileError::MissingHeader { column: 1 },
            ),
            (
                Format::Csv,
                b"a,b\n1,\"open\n2,3\n".to_vec(),
                FileError::UnterminatedQuote { line: 2 },
            ),
            (
                Format::Csv,
                b"a,b\n1,\xff\xfe\n".to_vec(),
                FileError::Encoding { line: 2 },
            ),
            (
                Format::Jsonl,
                b"{\"a\":1}\n\x00\x01\x02garbage".to_vec(),
                FileError::Binary { line: 2 },
            ),
            (
                Format::Csv,
                b"a,A\n1,2\n".to_vec(),
                FileError::DuplicateColumn { column: 2 },
            ),
        ];
        for (format, input, expected) in cases {
            let items = parse(format, &input, RowRules::default());
            assert_eq!(
                fatal(&items),
                Some(expected.clone()),
                "{expected:?}: {items:?}"
            );
        }
    }

    #[test]
    fn a_huge_line_is_refused_without_reading_it_whole() {
        let mut input = b"a\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        let items = parse(Format::Csv, &input, RowRules::default());
        assert_eq!(fatal(&items), Some(FileError::RowTooLong { line: 2 }));
        let items = parse(Format::Jsonl, &input, RowRules::default());
        assert_eq!(fatal(&items), Some(FileError::RowTooLong { line: 2 }));
    }

    #[test]
    fn jsonl_rows_and_row_errors() {
        let input = b"\xef\xbb\xbf{\"email\":\"A@Example.com\",\"n\":1}\r\n\n[1,2]\n{broken\n{\"phone\":\"+44 7700 900123\"}\n";
        let items = parse(Format::Jsonl, input, RowRules::default());
        let rows = valid_rows(&items);
        assert_eq!(rows.len(), 2, "{items:?}");
        assert_eq!(rows[0].0, 1);
        assert_eq!(rows[1].0, 5);
        let subjects: Vec<usize> = items
            .iter()
            .filter_map(|i| match i {
                Ok(ParsedRow::Valid { subjects, .. }) => Some(subjects.len()),
                _ => None,
            })
            .collect();
        assert_eq!(subjects, vec![1, 1]);
        let lines: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                Ok(ParsedRow::Invalid(e)) => Some(e.line),
                _ => None,
            })
            .collect();
        assert_eq!(lines, vec![3, 4]);
    }

    #[test]
    fn scanner_hashes_the_raw_bytes_bom_included() {
        let input = b"\xef\xbb\xbfa\n1\n";
        let mut reader = RowReader::new(&input[..], Format::Csv, RowRules::default());
        assert_eq!(reader.by_ref().count(), 1);
        let scanned = reader.scanned().unwrap();
        assert_eq!(scanned.bytes, input.len() as u64);
        assert_eq!(scanned.sha256, hex::encode(Sha256::digest(input)));
    }

    #[test]
    fn a_bom_split_across_reads_is_still_dropped() {
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let input = b"\xef\xbb\xbfname\nx\n";
        let items: Vec<_> =
            RowReader::new(OneByte(input), Format::Csv, RowRules::default()).collect();
        assert_eq!(valid_rows(&items)[0].1["name"], "x");
    }

    #[test]
    fn object_keys_round_trip() {
        let tenant = TenantId::parse("acme").unwrap();
        let id = "01JD2Z7Q3X9V8W7T6S5R4Q3P2N";
        assert!(is_import_id(id));
        let key = rows_batch_key(&tenant, id, 3);
        let parsed = ObjectKey::parse(&key).unwrap();
        assert_eq!(parsed.kind, ObjectKind::RowsBatch(3));
        assert_eq!(parsed.key(), key);
        assert_eq!(parsed.ref_source_id(), format!("{id}/rows/00000003.jsonl"));
        let upload = ObjectKey::parse(&format!("imports/acme/{id}/upload.csv")).unwrap();
        assert_eq!(upload.kind, ObjectKind::Upload(Format::Csv));
        assert!(upload.refs_prefix().starts_with(&import_refs_prefix(id)));
        for bad in [
            "imports/acme/not-an-id/upload.csv",
            "imports/a#b/01JD2Z7Q3X9V8W7T6S5R4Q3P2N/upload.csv",
            "other/acme/01JD2Z7Q3X9V8W7T6S5R4Q3P2N/upload.csv",
            "imports/acme/01JD2Z7Q3X9V8W7T6S5R4Q3P2N/evil.exe",
            "imports/acme/01JD2Z7Q3X9V8W7T6S5R4Q3P2N/rows/1.jsonl",
        ] {
            assert!(ObjectKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn subject_columns_by_name() {
        assert_eq!(subject_kind(" E-Mail "), Some(IdentifierKind::Email));
        assert_eq!(subject_kind("Phone Number"), Some(IdentifierKind::Phone));
        assert_eq!(subject_kind("contactId"), Some(IdentifierKind::ContactId));
        assert_eq!(subject_kind("name"), None);
        assert_eq!(subject_kind("Email Address"), Some(IdentifierKind::Email));
        assert_eq!(subject_kind("Customer Email"), Some(IdentifierKind::Email));
        assert_eq!(subject_kind("Mobile Phone"), Some(IdentifierKind::Phone));
    }

    fn kinds_and_places(
        row: &Value,
        declared: Option<&IdentifierFields>,
    ) -> Vec<(IdentifierKind, String)> {
        identifier_values(row.as_object().unwrap(), declared)
            .into_iter()
            .map(|f| (f.kind, f.place.into_owned()))
            .collect()
    }

    #[test]
    fn identifiers_are_found_in_aliases_nested_objects_and_declared_fields() {
        use IdentifierKind::*;
        // Aliased headers and one level of nesting, without any declaration.
        let row = serde_json::json!({
            "Customer Email": "a@example.com",
            "contact": {"email": "b@example.com", "id": "c-1", "name": "x"},
            "note": "not an identifier",
        });
        let mut found = kinds_and_places(&row, None);
        found.sort();
        assert_eq!(
            found,
            vec![
                (Email, "Customer Email".to_owned()),
                (Email, "contact.email".to_owned()),
                (ContactId, "contact.id".to_owned()),
            ]
        );
        // Declared: a column of any name, and a deep JSON pointer.
        let row = serde_json::json!({
            "Kunde": "k@example.com",
            "a": {"b": {"c": {"tel": "+44 7700 900123"}}},
            "a/b": "slash@example.com",
        });
        let declared = IdentifierFields {
            email: vec!["Kunde".into(), "/a~1b".into()],
            phone: vec!["/a/b/c/tel".into()],
            contact_id: vec!["/missing/field".into()],
        };
        assert!(declared.validate().is_ok());
        let mut found = kinds_and_places(&row, Some(&declared));
        found.sort();
        assert_eq!(
            found,
            vec![
                (Email, "/a~1b".to_owned()),
                (Email, "Kunde".to_owned()),
                (Phone, "/a/b/c/tel".to_owned()),
            ]
        );
        // A field found by default and declared again counts once.
        let row = serde_json::json!({"email": "a@example.com"});
        let declared = IdentifierFields {
            email: vec!["email".into(), "/email".into()],
            ..IdentifierFields::default()
        };
        assert_eq!(kinds_and_places(&row, Some(&declared)).len(), 1);
        // And rows are indexed by them.
        let rules = RowRules {
            identifiers: Some(IdentifierFields {
                email: vec!["/payload/who".into()],
                ..IdentifierFields::default()
            }),
            ..RowRules::default()
        };
        let row = serde_json::json!({"payload": {"who": "Who@Example.com"}, "contact": {"phone": "+1 202 555 0100"}});
        let subjects = rules.check(row.as_object().unwrap()).unwrap();
        assert_eq!(subjects.len(), 2);
    }

    #[test]
    fn declared_identifier_fields_are_checked_and_named() {
        let bad = |email: &str| IdentifierFields {
            email: vec!["email".into(), email.into()],
            ..IdentifierFields::default()
        };
        for field in ["/", "/a//b", "/a/b/c/d/e/f/g/h/i", "1abc", "a\u{0}b", ""] {
            let (place, _) = bad(field).validate().unwrap_err();
            assert_eq!(place, "email[1]", "{field:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_POINTER_LEN));
        assert_eq!(bad(&long).validate().unwrap_err().0, "email[1]");
        let many = IdentifierFields {
            phone: (0..17).map(|i| format!("p{i}")).collect(),
            ..IdentifierFields::default()
        };
        assert!(many.validate().is_err());
        assert!(
            serde_json::from_value::<IdentifierFields>(serde_json::json!({"mail": ["x"]})).is_err()
        );
    }

    #[test]
    fn the_filter_tests_the_pseudonyms_the_index_uses_and_skips_them_when_nobody_is_suppressed() {
        let secret = SecretSlice::from(vec![7u8; 32]);
        let tenant = TenantId::parse("acme").unwrap();
        let key = PseudonymKey::derive(&secret, &tenant);
        let rules = RowRules::default();
        let subjects = |row: Value| rules.check(row.as_object().unwrap()).unwrap();
        let restricted = subjects(serde_json::json!({"Customer Email": "R@Example.com"}));
        let withdrawn = subjects(serde_json::json!({"contact": {"phone": "+44 7700 900123"}}));
        let both =
            subjects(serde_json::json!({"email": "r@example.com", "phone": "+447700900123"}));
        let other = subjects(serde_json::json!({"email": "x@example.com"}));
        let filter = RowFilter::new(
            Suppressed::of(
                [key.pseudonym(&restricted[0]).to_string()],
                [key.pseudonym(&withdrawn[0]).to_string()],
            ),
            &secret,
            &tenant,
        );
        assert_eq!(filter.reason(&restricted), Some(Reason::Restricted));
        assert_eq!(filter.reason(&withdrawn), Some(Reason::ConsentWithdrawn));
        assert_eq!(filter.reason(&both), Some(Reason::Restricted));
        assert_eq!(filter.reason(&other), None);
        assert_eq!(filter.reason(&[]), None);
        let nobody = RowFilter::new(Suppressed::default(), &secret, &tenant);
        assert!(nobody.key.is_none());
        assert_eq!(nobody.reason(&restricted), None);
        let mut left_out = LeftOut::default();
        left_out.add(Reason::Restricted);
        left_out.add(Reason::ConsentWithdrawn);
        left_out.add(Reason::ConsentWithdrawn);
        assert_eq!(
            (
                left_out.restricted,
                left_out.consent_withdrawn,
                left_out.total()
            ),
            (1, 2, 3)
        );
    }

    #[test]
    fn every_import_error_has_its_http_answer() {
        use crate::kernel::http::table::{Detail, internal, row, shown};

        let not_found = (
            404,
            "not-found",
            None,
            Detail::Fixed("not found".into()),
            None,
        );
        assert_eq!(row(&ImportError::NotFound), not_found);
        for err in [
            ImportError::State(Status::Delivered),
            ImportError::Contended,
        ] {
            assert_eq!(row(&err), shown(409, "conflict", None), "{err}");
        }
        let cursor = shown(400, "invalid-request", Some("cursor"));
        assert_eq!(row(&ImportError::Store(StoreError::InvalidCursor)), cursor);
        let s3 = ImportError::S3("NoSuchBucket: custody-imports-x".into());
        assert_eq!(row(&s3), internal());
    }
}
