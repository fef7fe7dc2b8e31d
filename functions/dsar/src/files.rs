//! A data subject's rows in imported files: reading them for an access bundle, and
//! rewriting the files without them for an erasure.
//!
//! A row belongs to the subject when one of its subject columns (the import's own
//! rules: [`custody::imports::subject_kind`]) normalises and pseudonymises to one of
//! the request's pseudonyms, with the import's default country code for national
//! phone numbers — exactly how the import indexed it. So matching needs no plaintext
//! identifier: the request stores pseudonyms only.
//!
//! CSV is read with the `csv` crate record by record, so a rewritten file keeps the
//! header and the other rows (their quoting may be normalised); JSON Lines keeps the
//! other lines byte for byte.

use std::collections::HashSet;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use custody::aws::error_text;
use custody::imports::{Format, ObjectKey, subject_kind};
use custody::subject::{Identifier, IdentifierKind, PseudonymKey};
use serde_json::{Map, Value};

use crate::Deps;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("S3 call failed: {0}")]
    S3(String),
    #[error("object {0} could not be parsed: {1}")]
    Parse(String, String),
}

/// Which rows are the subject's.
pub struct SubjectMatcher<'a> {
    pub key: &'a PseudonymKey,
    pub pseudonyms: &'a HashSet<String>,
    pub default_country_code: Option<String>,
}

impl SubjectMatcher<'_> {
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        row.iter().any(|(column, value)| {
            let Some(kind) = subject_kind(column) else {
                return false;
            };
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) if kind != IdentifierKind::Email => n.to_string(),
                _ => return false,
            };
            Identifier::new(kind, &text, self.default_country_code.as_deref())
                .map(|id| self.pseudonyms.contains(self.key.pseudonym(&id).as_str()))
                .unwrap_or(false)
        })
    }
}

/// The format of an import object, from its key.
pub fn format_of(key: &str) -> Format {
    match ObjectKey::parse(key).map(|k| k.kind) {
        Some(custody::imports::ObjectKind::Upload(Format::Csv)) => Format::Csv,
        Some(_) => Format::Jsonl,
        None if key.ends_with(".csv") => Format::Csv,
        None => Format::Jsonl,
    }
}

/// An object split into the subject's rows and everything else.
#[derive(Debug, Default)]
pub struct Split {
    /// The subject's rows, as JSON objects.
    pub matched: Vec<Map<String, Value>>,
    /// The object without the subject's rows.
    pub kept: Vec<u8>,
    /// Data rows kept (not counting a CSV header).
    pub kept_rows: u64,
}

pub fn split(key: &str, bytes: &[u8], matcher: &SubjectMatcher<'_>) -> Result<Split, FileError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    match format_of(key) {
        Format::Csv => split_csv(bytes, matcher).map_err(|e| FileError::Parse(key.to_owned(), e)),
        _ => Ok(split_jsonl(bytes, matcher)),
    }
}

fn split_csv(bytes: &[u8], matcher: &SubjectMatcher<'_>) -> Result<Split, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header: Option<Vec<String>> = None;
    let mut split = Split::default();
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader
            .read_record(&mut record)
            .map_err(|e| format!("{:?}", e.kind()))?;
        if !more {
            break;
        }
        let Some(names) = &header else {
            header = Some(record.iter().map(|f| f.trim().to_owned()).collect());
            writer.write_record(&record).map_err(|e| e.to_string())?;
            continue;
        };
        let row: Map<String, Value> = names
            .iter()
            .zip(record.iter())
            .map(|(name, value)| (name.clone(), Value::String(value.to_owned())))
            .collect();
        if matcher.matches(&row) {
            split.matched.push(row);
        } else {
            split.kept_rows += 1;
            writer.write_record(&record).map_err(|e| e.to_string())?;
        }
    }
    split.kept = writer.into_inner().map_err(|e| e.to_string())?;
    Ok(split)
}

fn split_jsonl(bytes: &[u8], matcher: &SubjectMatcher<'_>) -> Split {
    let mut split = Split::default();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let parsed = std::str::from_utf8(line)
            .ok()
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .and_then(|text| serde_json::from_str::<Value>(text).ok());
        match parsed {
            Some(Value::Object(row)) if matcher.matches(&row) => split.matched.push(row),
            Some(_) => {
                split.kept_rows += 1;
                split.kept.extend_from_slice(line);
            }
            // Blank or unreadable lines name no one we can match; kept as they were.
            None => split.kept.extend_from_slice(line),
        }
    }
    split
}

/// The current object, or `None` if it is gone.
pub async fn read_object(deps: &Deps, key: &str) -> Result<Option<Vec<u8>>, FileError> {
    let result = deps
        .s3
        .get_object()
        .bucket(&deps.config.imports_bucket)
        .key(key)
        .send()
        .await;
    let out = match result {
        Ok(out) => out,
        Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
        Err(err) => return Err(FileError::S3(error_text(&err))),
    };
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| FileError::S3(e.to_string()))?;
    Ok(Some(body.into_bytes().to_vec()))
}

/// What erasing the subject from one object did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ObjectErasure {
    pub rows_removed: u64,
    pub rewritten: bool,
    pub versions_deleted: u64,
}

/// Rewrites the object without the subject's rows (same key, tags and SSE-KMS), or
/// deletes it when no data row is left — or, with `whole` (data past its retention,
/// which nobody may read any more), deletes it outright — then deletes every older
/// version: the old bytes must not survive as a noncurrent version. Idempotent: a
/// second run removes no rows and finds no older versions.
pub async fn erase_from_object(
    deps: &Deps,
    key: &str,
    matcher: &SubjectMatcher<'_>,
    whole: bool,
) -> Result<ObjectErasure, FileError> {
    let mut outcome = ObjectErasure::default();
    let bucket = &deps.config.imports_bucket;
    let mut keep_version: Option<String> = None;
    if let Some(bytes) = read_object(deps, key).await? {
        let split = split(key, &bytes, matcher)?;
        outcome.rows_removed = split.matched.len() as u64;
        if whole {
            // Every version goes below; nothing is kept.
        } else if outcome.rows_removed > 0 && split.kept_rows > 0 {
            let tags = deps
                .s3
                .get_object_tagging()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| FileError::S3(error_text(&e)))?;
            let tagging = tags
                .tag_set()
                .iter()
                .map(|t| format!("{}={}", encode(t.key()), encode(t.value())))
                .collect::<Vec<_>>()
                .join("&");
            let content_type = match format_of(key) {
                Format::Csv => Format::Csv.content_type(),
                _ => Format::Jsonl.content_type(),
            };
            let put = deps
                .s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(split.kept))
                .content_type(content_type)
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(&deps.config.data_key_id)
                .set_tagging((!tagging.is_empty()).then_some(tagging))
                .send()
                .await
                .map_err(|e| FileError::S3(error_text(&e)))?;
            keep_version = put.version_id().map(str::to_owned);
            outcome.rewritten = true;
        }
        // No subject rows: the current version stays (an earlier run rewrote it).
        if outcome.rows_removed == 0 && !whole {
            keep_version = current_version(deps, key).await?;
        }
    }
    outcome.versions_deleted =
        delete_versions_except(deps, bucket, key, keep_version.as_deref()).await?;
    Ok(outcome)
}

async fn current_version(deps: &Deps, key: &str) -> Result<Option<String>, FileError> {
    let out = deps
        .s3
        .head_object()
        .bucket(&deps.config.imports_bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| FileError::S3(error_text(&e)))?;
    Ok(out.version_id().map(str::to_owned))
}

/// Deletes every version and delete marker of exactly `key` but `keep`.
pub async fn delete_versions_except(
    deps: &Deps,
    bucket: &str,
    key: &str,
    keep: Option<&str>,
) -> Result<u64, FileError> {
    let mut deleted = 0;
    let mut key_marker: Option<String> = None;
    let mut version_marker: Option<String> = None;
    loop {
        let out = deps
            .s3
            .list_object_versions()
            .bucket(bucket)
            .prefix(key)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .map_err(|e| FileError::S3(error_text(&e)))?;
        let versions = out
            .versions()
            .iter()
            .map(|v| (v.key(), v.version_id()))
            .chain(
                out.delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id())),
            );
        let mut doomed = Vec::new();
        for (k, version) in versions {
            if k == Some(key) && version != keep {
                doomed.push(version.map(str::to_owned));
            }
        }
        for version in doomed {
            deps.s3
                .delete_object()
                .bucket(bucket)
                .key(key)
                .set_version_id(version)
                .send()
                .await
                .map_err(|e| FileError::S3(error_text(&e)))?;
            deleted += 1;
        }
        if out.is_truncated().unwrap_or(false) {
            key_marker = out.next_key_marker().map(str::to_owned);
            version_marker = out.next_version_id_marker().map(str::to_owned);
        } else {
            return Ok(deleted);
        }
    }
}

/// Deletes every version and delete marker under `prefix` in `bucket`.
pub async fn delete_prefix_versions(
    deps: &Deps,
    bucket: &str,
    prefix: &str,
) -> Result<u64, FileError> {
    let mut deleted = 0;
    loop {
        let out = deps
            .s3
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .map_err(|e| FileError::S3(error_text(&e)))?;
        let doomed: Vec<(String, Option<String>)> = out
            .versions()
            .iter()
            .map(|v| (v.key(), v.version_id()))
            .chain(
                out.delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id())),
            )
            .filter_map(|(k, v)| k.map(|k| (k.to_owned(), v.map(str::to_owned))))
            .collect();
        if doomed.is_empty() {
            return Ok(deleted);
        }
        for (key, version) in doomed {
            deps.s3
                .delete_object()
                .bucket(bucket)
                .key(&key)
                .set_version_id(version)
                .send()
                .await
                .map_err(|e| FileError::S3(error_text(&e)))?;
            deleted += 1;
        }
    }
}

/// Percent-encodes a tag key or value for the `x-amz-tagging` header (URL query form).
fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody::tenant::TenantId;
    use secrecy::SecretSlice;

    fn key() -> PseudonymKey {
        PseudonymKey::derive(
            &SecretSlice::from(b"0123456789abcdef0123456789abcdef-unit".to_vec()),
            &TenantId::parse("acme").unwrap(),
        )
    }

    #[test]
    fn csv_and_jsonl_rows_of_the_subject_are_split_off() {
        let key = key();
        let pseudonyms: HashSet<String> = [key
            .pseudonym(&Identifier::email("Ann@Example.com").unwrap())
            .to_string()]
        .into();
        let matcher = SubjectMatcher {
            key: &key,
            pseudonyms: &pseudonyms,
            default_country_code: None,
        };
        let csv = b"name,Email,phone\nAnn,ANN@example.com ,+44 7700 900001\nBob,bob@example.com,\n\"Quoted, Carl\",carl@example.com,\n";
        let csv_split = split("imports/acme/x/upload.csv", csv, &matcher).unwrap();
        assert_eq!(csv_split.matched.len(), 1);
        assert_eq!(csv_split.matched[0]["name"], "Ann");
        assert_eq!(csv_split.kept_rows, 2);
        let kept = String::from_utf8(csv_split.kept).unwrap();
        assert!(kept.starts_with("name,Email,phone\n"), "{kept}");
        assert!(!kept.contains("Ann"), "{kept}");
        assert!(kept.contains("\"Quoted, Carl\""), "{kept}");

        let jsonl = b"{\"email\":\"ann@example.com\",\"n\":1}\n{\"email\":\"bob@example.com\"}\n\nnot json\n";
        let jsonl_split = split("imports/acme/x/rows/00000001.jsonl", jsonl, &matcher).unwrap();
        assert_eq!(jsonl_split.matched.len(), 1);
        assert_eq!(
            String::from_utf8(jsonl_split.kept).unwrap(),
            "{\"email\":\"bob@example.com\"}\n\nnot json\n"
        );
    }
}
