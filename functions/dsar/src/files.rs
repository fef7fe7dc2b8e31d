//! A data subject's rows in imported files: reading them for an access bundle, and
//! rewriting the files without them for an erasure.
//!
//! A row belongs to the subject when one of its identifier fields (the import's own
//! rules, [`custody::imports::identifier_values`]: default column names and their
//! aliases, one level of nesting, the fields the import declared) normalises and
//! pseudonymises to one of
//! the request's pseudonyms, with the import's default country code for national
//! phone numbers — exactly how the import indexed it. So matching needs no plaintext
//! identifier: the request stores pseudonyms only.
//!
//! Objects are streamed, never held whole: an import may be 1 GiB and the function
//! has 512 MB. [`RowFilter`] cuts the byte stream into records (a CSV record ends at
//! a newline outside quotes, so a quoted field may hold newlines and a record may
//! cross chunk boundaries; a JSON line at any newline) and passes every record that
//! is not the subject's through byte for byte. An erasure writes what is kept with a
//! multipart upload ([`Rewriter`] cuts parts of at least 5 MiB, S3's rule for all but
//! the last), so memory is bounded by the part and chunk sizes, not the file.
//!
//! A rectification goes through the same filter in its rectifying mode: the
//! subject's rows are written back with the corrected identifier values in the fields
//! that held the old ones (re-encoded: a CSV record with its fields quoted as needed,
//! a JSON line with its keys in sorted order); every other row passes byte for byte.

use std::collections::HashSet;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use custody::aws::error_text;
use custody::imports::{Format, MAX_ROW_BYTES, ObjectKey, identifier_values};
use custody::subject::{Identifier, IdentifierKind, PseudonymKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Deps;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("S3 call failed: {0}")]
    S3(String),
    #[error("object {0} could not be parsed: {1}")]
    Parse(String, String),
}

/// S3's smallest part of a multipart upload (all but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// How an object is streamed: the largest piece handed to the filter at once, and
/// the size at which kept bytes are uploaded as a part (never below [`MIN_PART_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming {
    pub chunk_bytes: usize,
    pub part_bytes: usize,
}

impl Default for Streaming {
    fn default() -> Self {
        Self {
            chunk_bytes: 256 * 1024,
            part_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Streaming {
    /// The most bytes a [`Rewriter`] holds at once: a part being filled, one chunk,
    /// and the unfinished record carried over (at most a row, plus a chunk).
    pub fn memory_bound(&self) -> usize {
        self.part_bytes.max(MIN_PART_BYTES) + 2 * self.chunk_bytes.max(1) + MAX_ROW_BYTES
    }
}

/// Which rows are the subject's.
pub struct SubjectMatcher<'a> {
    pub key: &'a PseudonymKey,
    pub pseudonyms: &'a HashSet<String>,
    /// The import's rules: its declared identifier fields and country code.
    pub rules: custody::imports::RowRules,
}

impl SubjectMatcher<'_> {
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        // The same identifiers the import indexed the row by.
        identifier_values(row, self.rules.identifiers.as_ref())
            .into_iter()
            .any(|found| {
                let text = match found.value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) if found.kind != IdentifierKind::Email => n.to_string(),
                    _ => return false,
                };
                Identifier::new(
                    found.kind,
                    &text,
                    self.rules.default_country_code.as_deref(),
                )
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

/// A rectification's corrections: per identifier kind, the subject's current
/// pseudonym and the corrected value (normalised). Plaintext: held in memory only.
#[derive(Clone, Default)]
pub struct Corrections {
    pub values: Vec<(IdentifierKind, String, String)>,
}

impl std::fmt::Debug for Corrections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The corrected values are personal data.
        let kinds: Vec<_> = self.values.iter().map(|(kind, _, _)| *kind).collect();
        write!(f, "Corrections({kinds:?}, <redacted>)")
    }
}

/// What the filter does with the subject's rows.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Leave them out of the output: kept in `matched` (an access bundle) or only
    /// counted (an erasure).
    Split { keep_matched: bool },
    /// Write them with the corrected values.
    Rectify(&'a Corrections),
}

/// Splits a byte stream, fed in pieces of any size, into the subject's rows and
/// everything else (appended to `out` unchanged, byte for byte); or, rectifying,
/// writes the subject's rows with corrected values in place.
pub struct RowFilter<'a, 'm> {
    csv: bool,
    matcher: &'a SubjectMatcher<'m>,
    mode: Mode<'a>,
    /// The unfinished record: bytes since the last record end.
    carry: Vec<u8>,
    /// How much of `carry` was already scanned for quotes and newlines.
    scanned: usize,
    in_quotes: bool,
    header: Option<Vec<String>>,
    first_record: bool,
    pub matched: Vec<Map<String, Value>>,
    pub rows_removed: u64,
    /// Data rows kept (not counting a CSV header).
    pub kept_rows: u64,
    /// The subject's rows written with corrected values (rectifying only).
    pub rows_rectified: u64,
}

impl<'a, 'm> RowFilter<'a, 'm> {
    pub fn new(format: Format, matcher: &'a SubjectMatcher<'m>, keep_matched: bool) -> Self {
        Self::with_mode(format, matcher, Mode::Split { keep_matched })
    }

    /// A filter that keeps every row and corrects the subject's.
    pub fn rectifying(
        format: Format,
        matcher: &'a SubjectMatcher<'m>,
        corrections: &'a Corrections,
    ) -> Self {
        Self::with_mode(format, matcher, Mode::Rectify(corrections))
    }

    fn with_mode(format: Format, matcher: &'a SubjectMatcher<'m>, mode: Mode<'a>) -> Self {
        Self {
            csv: format == Format::Csv,
            matcher,
            mode,
            carry: Vec::new(),
            scanned: 0,
            in_quotes: false,
            header: None,
            first_record: true,
            matched: Vec::new(),
            rows_removed: 0,
            kept_rows: 0,
            rows_rectified: 0,
        }
    }

    /// Bytes held for an unfinished record.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.carry.extend_from_slice(chunk);
        let carry = std::mem::take(&mut self.carry);
        let mut start = 0;
        let mut result = Ok(());
        for (i, &b) in carry.iter().enumerate().skip(self.scanned) {
            if self.csv && b == b'"' {
                self.in_quotes = !self.in_quotes;
            } else if b == b'\n' && !self.in_quotes {
                result = self.record(&carry[start..=i], out);
                if result.is_err() {
                    break;
                }
                start = i + 1;
            }
        }
        let mut carry = carry;
        carry.drain(..start);
        self.scanned = carry.len();
        self.carry = carry;
        result?;
        // The import never accepted a longer record; a run-away quote must not
        // make the carry grow with the file.
        if self.carry.len() > MAX_ROW_BYTES {
            return Err(format!("a row is longer than {MAX_ROW_BYTES} bytes"));
        }
        Ok(())
    }

    /// The last record (without a final newline), after the last piece.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        if self.in_quotes {
            return Err("a quoted field is never closed".into());
        }
        let carry = std::mem::take(&mut self.carry);
        self.scanned = 0;
        if carry.is_empty() {
            Ok(())
        } else {
            self.record(&carry, out)
        }
    }

    fn record(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut text = raw;
        if std::mem::take(&mut self.first_record) {
            // A BOM is kept in the output but is not part of the first name/value.
            text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
        }
        let mut fields = None;
        let row = if self.csv {
            self.csv_row(text)?.map(|(row, record)| {
                fields = Some(record);
                row
            })
        } else {
            std::str::from_utf8(text)
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .map(|value| match value {
                    Value::Object(row) => Some(row),
                    _ => None,
                })
                .map(|row| row.unwrap_or_default())
        };
        match (row, self.mode) {
            (Some(row), Mode::Rectify(corrections))
                if !row.is_empty() && self.matcher.matches(&row) =>
            {
                self.kept_rows += 1;
                match self.rectified(raw, text, row, fields, corrections)? {
                    Some(bytes) => {
                        self.rows_rectified += 1;
                        out.extend_from_slice(&bytes);
                    }
                    // The subject's row without an old value to correct.
                    None => out.extend_from_slice(raw),
                }
            }
            (Some(row), Mode::Split { keep_matched })
                if !row.is_empty() && self.matcher.matches(&row) =>
            {
                self.rows_removed += 1;
                if keep_matched {
                    self.matched.push(row);
                }
            }
            (Some(_), _) => {
                self.kept_rows += 1;
                out.extend_from_slice(raw);
            }
            // A header, blank or unreadable line names no one we can match: kept.
            (None, _) => out.extend_from_slice(raw),
        }
        Ok(())
    }

    /// The subject's record with the corrected values in every identifier field
    /// holding an old one (the fields the import's rules find, as matching does), or
    /// `None` when no field holds one. Keeps a BOM and the record's line ending.
    fn rectified(
        &self,
        raw: &[u8],
        text: &[u8],
        mut row: Map<String, Value>,
        fields: Option<csv::StringRecord>,
        corrections: &Corrections,
    ) -> Result<Option<Vec<u8>>, String> {
        let targets = correction_targets(self.matcher, &row, corrections);
        if targets.is_empty() {
            return Ok(None);
        }
        let ending: &[u8] = if text.ends_with(b"\r\n") {
            b"\r\n"
        } else if text.ends_with(b"\n") {
            b"\n"
        } else {
            b""
        };
        let mut bytes = raw[..raw.len() - text.len()].to_vec();
        match (fields, &self.header) {
            (Some(record), Some(names)) => {
                let mut values: Vec<String> = record.iter().map(str::to_owned).collect();
                for (column, _, to) in &targets {
                    // CSV rows are flat: a target is a column, found by its header.
                    if let Some(i) = names.iter().position(|name| name == column)
                        && let Some(value) = values.get_mut(i)
                    {
                        value.clone_from(to);
                    }
                }
                let mut writer = csv::WriterBuilder::new()
                    .flexible(true)
                    .terminator(csv::Terminator::Any(b'\n'))
                    .from_writer(Vec::new());
                writer
                    .write_record(&values)
                    .map_err(|e| format!("{:?}", e.kind()))?;
                let encoded = writer.into_inner().map_err(|e| e.to_string())?;
                bytes.extend_from_slice(encoded.strip_suffix(b"\n").unwrap_or(&encoded));
            }
            _ => {
                for (column, tail, to) in &targets {
                    let slot = row.get_mut(column).and_then(|value| {
                        if tail.is_empty() {
                            Some(value)
                        } else {
                            value.pointer_mut(tail)
                        }
                    });
                    if let Some(slot) = slot {
                        *slot = Value::String(to.clone());
                    }
                }
                let encoded = serde_json::to_vec(&row).map_err(|e| e.to_string())?;
                bytes.extend_from_slice(&encoded);
            }
        }
        bytes.extend_from_slice(ending);
        Ok(Some(bytes))
    }

    /// A CSV data row as a JSON object with its fields; `None` for the header and
    /// blank lines.
    fn csv_row(&mut self, text: &[u8]) -> Result<Option<CsvRow>, String> {
        let trimmed = text
            .strip_suffix(b"\n")
            .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
            .unwrap_or(text);
        if trimmed.is_empty() {
            return Ok(None);
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(trimmed.len().max(64))
            .from_reader(trimmed);
        let mut record = csv::StringRecord::new();
        reader
            .read_record(&mut record)
            .map_err(|e| format!("{:?}", e.kind()))?;
        let Some(names) = &self.header else {
            self.header = Some(record.iter().map(|f| f.trim().to_owned()).collect());
            return Ok(None);
        };
        let row = names
            .iter()
            .zip(record.iter())
            .map(|(name, value)| (name.clone(), Value::String(value.to_owned())))
            .collect();
        Ok(Some((row, record)))
    }
}

/// Where the old values are in one of the subject's rows: (column, JSON pointer
/// below it or empty, corrected value) for every identifier field the import's rules
/// find ([`identifier_values`], as matching) whose value is the subject's current one
/// of a corrected kind.
fn correction_targets(
    matcher: &SubjectMatcher<'_>,
    row: &Map<String, Value>,
    corrections: &Corrections,
) -> Vec<(String, String, String)> {
    identifier_values(row, matcher.rules.identifiers.as_ref())
        .into_iter()
        .filter_map(|found| {
            let (_, _, to) = corrections
                .values
                .iter()
                .find(|(kind, from, _)| *kind == found.kind && found_is(matcher, &found, from))?;
            let (column, tail) = path_of(row, found.value)?;
            Some((column, tail, to.clone()))
        })
        .collect()
}

/// Whether a found identifier value pseudonymises to `pseudonym`.
fn found_is(
    matcher: &SubjectMatcher<'_>,
    found: &custody::imports::IdentifierValue<'_>,
    pseudonym: &str,
) -> bool {
    let text = match found.value {
        Value::String(s) => s.clone(),
        Value::Number(n) if found.kind != IdentifierKind::Email => n.to_string(),
        _ => return false,
    };
    Identifier::new(
        found.kind,
        &text,
        matcher.rules.default_country_code.as_deref(),
    )
    .is_ok_and(|id| matcher.key.pseudonym(&id).as_str() == pseudonym)
}

/// The place of `target` (a reference into `row`) as its column and a JSON pointer
/// below it: found by identity, so it is exactly the value the rules found.
fn path_of(row: &Map<String, Value>, target: &Value) -> Option<(String, String)> {
    fn below(value: &Value, target: &Value, at: &mut String) -> bool {
        let step = |key: &str, inner: &Value, at: &mut String| {
            let len = at.len();
            at.push('/');
            at.push_str(&key.replace('~', "~0").replace('/', "~1"));
            if std::ptr::eq(inner, target) || below(inner, target, at) {
                return true;
            }
            at.truncate(len);
            false
        };
        match value {
            Value::Object(map) => map.iter().any(|(key, inner)| step(key, inner, at)),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .any(|(i, inner)| step(&i.to_string(), inner, at)),
            _ => false,
        }
    }
    row.iter().find_map(|(column, value)| {
        let mut at = String::new();
        (std::ptr::eq(value, target) || below(value, target, &mut at)).then(|| (column.clone(), at))
    })
}

/// A CSV data row by column name, and its fields as read (to write it back).
type CsvRow = (Map<String, Value>, csv::StringRecord);

/// Filters a stream into upload parts: every part but the last is at least
/// `part_bytes` (itself at least [`MIN_PART_BYTES`]). Records the most bytes it held.
pub struct Rewriter<'a, 'm> {
    pub filter: RowFilter<'a, 'm>,
    out: Vec<u8>,
    part_bytes: usize,
    /// High-water mark of bytes buffered (part being filled plus carried record).
    pub peak_buffered: usize,
}

impl<'a, 'm> Rewriter<'a, 'm> {
    pub fn new(filter: RowFilter<'a, 'm>, streaming: Streaming) -> Self {
        Self {
            filter,
            out: Vec::new(),
            part_bytes: streaming.part_bytes.max(MIN_PART_BYTES),
            peak_buffered: 0,
        }
    }

    /// Feeds a piece; returns a full part when one is ready.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let before = self.filter.carried() + chunk.len();
        self.filter.push(chunk, &mut self.out)?;
        // While a piece is filtered its bytes are both carried and copied out.
        self.peak_buffered = self.peak_buffered.max(before + self.out.len());
        if self.out.len() >= self.part_bytes {
            return Ok(Some(std::mem::take(&mut self.out)));
        }
        Ok(None)
    }

    /// The last part (possibly empty) after the last piece.
    pub fn finish(&mut self) -> Result<Vec<u8>, String> {
        let before = self.filter.carried();
        self.filter.finish(&mut self.out)?;
        self.peak_buffered = self.peak_buffered.max(before + self.out.len());
        Ok(std::mem::take(&mut self.out))
    }
}

/// An object's body handed out in pieces of at most `chunk_bytes`.
pub struct ObjectStream {
    body: ByteStream,
    pending: bytes::Bytes,
    chunk_bytes: usize,
    /// The version read: the one a rewrite replaces.
    pub version_id: Option<String>,
}

impl ObjectStream {
    pub async fn next(&mut self) -> Result<Option<bytes::Bytes>, FileError> {
        while self.pending.is_empty() {
            match self.body.next().await {
                None => return Ok(None),
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(err)) => return Err(FileError::S3(err.to_string())),
            }
        }
        let n = self.pending.len().min(self.chunk_bytes.max(1));
        Ok(Some(self.pending.split_to(n)))
    }
}

/// Opens the current object for streaming, or `None` if it is gone.
pub async fn open_object(
    deps: &Deps,
    key: &str,
    streaming: Streaming,
) -> Result<Option<ObjectStream>, FileError> {
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
    Ok(Some(ObjectStream {
        version_id: out.version_id().map(str::to_owned),
        body: out.body,
        pending: bytes::Bytes::new(),
        chunk_bytes: streaming.chunk_bytes,
    }))
}

/// The subject's rows in one object (memory: those rows and one chunk), or none if
/// the object is gone.
pub async fn subject_rows(
    deps: &Deps,
    key: &str,
    matcher: &SubjectMatcher<'_>,
    streaming: Streaming,
) -> Result<Vec<Map<String, Value>>, FileError> {
    let Some(mut stream) = open_object(deps, key, streaming).await? else {
        return Ok(Vec::new());
    };
    let mut filter = RowFilter::new(format_of(key), matcher, true);
    let mut sink = Vec::new();
    let parse = |e| FileError::Parse(key.to_owned(), e);
    while let Some(chunk) = stream.next().await? {
        filter.push(&chunk, &mut sink).map_err(parse)?;
        sink.clear();
    }
    filter.finish(&mut sink).map_err(parse)?;
    Ok(filter.matched)
}

/// The whole current object, or `None` if it is gone. Only for small objects (tests
/// read results with it); erasure and access stream.
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
    /// Parts of the multipart upload that wrote the rewritten object.
    pub parts: u32,
    /// The rewriter's high-water mark of bytes buffered.
    pub peak_buffered: usize,
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
    erase_streaming(deps, key, matcher, whole, Streaming::default()).await
}

/// [`erase_from_object`] with explicit chunk and part sizes.
pub async fn erase_streaming(
    deps: &Deps,
    key: &str,
    matcher: &SubjectMatcher<'_>,
    whole: bool,
    streaming: Streaming,
) -> Result<ObjectErasure, FileError> {
    let mut outcome = ObjectErasure::default();
    let bucket = &deps.config.imports_bucket;
    let mut keep_version: Option<String> = None;
    if let Some(mut stream) = open_object(deps, key, streaming).await? {
        let mut upload = Upload {
            deps,
            key,
            id: None,
            parts: Vec::new(),
        };
        let filter = RowFilter::new(format_of(key), matcher, false);
        let result = rewrite(&mut stream, &mut upload, filter, whole, streaming, key).await;
        let (rewriter, last) = match result {
            Ok(done) => done,
            Err(err) => {
                // No orphan parts: the original stays current and the step retries.
                upload.abort().await;
                return Err(err);
            }
        };
        let removed = rewriter.filter.rows_removed;
        outcome = ObjectErasure {
            rows_removed: removed,
            rewritten: !whole && removed > 0 && rewriter.filter.kept_rows > 0,
            peak_buffered: rewriter.peak_buffered,
            ..ObjectErasure::default()
        };
        if !whole && outcome.rows_removed > 0 && outcome.rewritten {
            match upload.complete(last).await {
                Ok(version) => keep_version = version,
                Err(err) => {
                    upload.abort().await;
                    return Err(err);
                }
            }
            outcome.parts = upload.parts.len() as u32;
        } else {
            upload.abort().await;
        }
        // No subject rows: the current version stays (an earlier run rewrote it).
        if outcome.rows_removed == 0 && !whole {
            keep_version = stream.version_id.clone();
            if keep_version.is_none() {
                keep_version = current_version(deps, key).await?;
            }
        }
    }
    outcome.versions_deleted =
        delete_versions_except(deps, bucket, key, keep_version.as_deref()).await?;
    Ok(outcome)
}

/// Streams the object through the filter, uploading full parts as they fill (none
/// with `whole`). Returns the rewriter (its filter's counts say whether a rewrite is
/// due) and the last part.
async fn rewrite<'a, 'm>(
    stream: &mut ObjectStream,
    upload: &mut Upload<'_>,
    filter: RowFilter<'a, 'm>,
    whole: bool,
    streaming: Streaming,
    key: &str,
) -> Result<(Rewriter<'a, 'm>, Vec<u8>), FileError> {
    let parse = |e| FileError::Parse(key.to_owned(), e);
    let mut rewriter = Rewriter::new(filter, streaming);
    while let Some(chunk) = stream.next().await? {
        if let Some(part) = rewriter.push(&chunk).map_err(parse)? {
            // Past retention nothing is written; the rows are only counted.
            if !whole {
                upload.part(part).await?;
            }
        }
    }
    let last = rewriter.finish().map_err(parse)?;
    Ok((rewriter, last))
}

/// What rectifying the subject's rows of one object did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRectification {
    pub rows_rectified: u64,
    pub rewritten: bool,
    pub versions_deleted: u64,
}

/// How many of the subject's rows in the object still hold an old value (a dry run
/// of [`rectify_object`]; 0 if the object is gone).
pub async fn rows_to_rectify(
    deps: &Deps,
    key: &str,
    matcher: &SubjectMatcher<'_>,
    corrections: &Corrections,
) -> Result<u64, FileError> {
    let Some(mut stream) = open_object(deps, key, Streaming::default()).await? else {
        return Ok(0);
    };
    let mut filter = RowFilter::rectifying(format_of(key), matcher, corrections);
    let mut sink = Vec::new();
    let parse = |e| FileError::Parse(key.to_owned(), e);
    while let Some(chunk) = stream.next().await? {
        filter.push(&chunk, &mut sink).map_err(parse)?;
        sink.clear();
    }
    filter.finish(&mut sink).map_err(parse)?;
    Ok(filter.rows_rectified)
}

/// Rewrites the object with the corrected values in the subject's rows (same key,
/// tags and SSE-KMS, every other row byte for byte), then deletes every older
/// version: the old values must not survive as a noncurrent version. Idempotent: a
/// second run corrects no rows and finds no older versions.
pub async fn rectify_object(
    deps: &Deps,
    key: &str,
    matcher: &SubjectMatcher<'_>,
    corrections: &Corrections,
    streaming: Streaming,
) -> Result<ObjectRectification, FileError> {
    let mut outcome = ObjectRectification::default();
    let mut keep_version: Option<String> = None;
    if let Some(mut stream) = open_object(deps, key, streaming).await? {
        let mut upload = Upload {
            deps,
            key,
            id: None,
            parts: Vec::new(),
        };
        let filter = RowFilter::rectifying(format_of(key), matcher, corrections);
        let (rewriter, last) =
            match rewrite(&mut stream, &mut upload, filter, false, streaming, key).await {
                Ok(done) => done,
                Err(err) => {
                    upload.abort().await;
                    return Err(err);
                }
            };
        outcome.rows_rectified = rewriter.filter.rows_rectified;
        if outcome.rows_rectified > 0 {
            match upload.complete(last).await {
                Ok(version) => keep_version = version,
                Err(err) => {
                    upload.abort().await;
                    return Err(err);
                }
            }
            outcome.rewritten = true;
        } else {
            // Nothing to correct (an earlier run did): the current version stays.
            upload.abort().await;
            keep_version = match stream.version_id.clone() {
                Some(version) => Some(version),
                None => current_version(deps, key).await?,
            };
        }
    }
    outcome.versions_deleted = delete_versions_except(
        deps,
        &deps.config.imports_bucket,
        key,
        keep_version.as_deref(),
    )
    .await?;
    Ok(outcome)
}

/// A multipart upload to the object's own key, created on the first part with the
/// original's tags (they drive lifecycle expiry), content type and SSE-KMS.
struct Upload<'d> {
    deps: &'d Deps,
    key: &'d str,
    id: Option<String>,
    parts: Vec<CompletedPart>,
}

impl Upload<'_> {
    async fn part(&mut self, body: Vec<u8>) -> Result<(), FileError> {
        let s3 = &self.deps.s3;
        let bucket = &self.deps.config.imports_bucket;
        let id = match &self.id {
            Some(id) => id.clone(),
            None => {
                let tags = s3
                    .get_object_tagging()
                    .bucket(bucket)
                    .key(self.key)
                    .send()
                    .await
                    .map_err(|e| FileError::S3(error_text(&e)))?;
                // The original's tags, and the rewrite's own mark: the import function
                // leaves a version so marked alone (any other one is a second upload).
                let (mark, value) = custody::imports::REWRITE_TAG;
                let tagging = tags
                    .tag_set()
                    .iter()
                    .filter(|t| t.key() != mark)
                    .map(|t| (t.key(), t.value()))
                    .chain(std::iter::once((mark, value)))
                    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                let content_type = match format_of(self.key) {
                    Format::Csv => Format::Csv.content_type(),
                    _ => Format::Jsonl.content_type(),
                };
                let created = s3
                    .create_multipart_upload()
                    .bucket(bucket)
                    .key(self.key)
                    .content_type(content_type)
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .ssekms_key_id(&self.deps.config.data_key_id)
                    .set_tagging((!tagging.is_empty()).then_some(tagging))
                    .send()
                    .await
                    .map_err(|e| FileError::S3(error_text(&e)))?;
                let id = created
                    .upload_id()
                    .ok_or_else(|| FileError::S3("no upload id".into()))?
                    .to_owned();
                self.id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(self.key)
            .upload_id(&id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| FileError::S3(error_text(&e)))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    /// Uploads the last part and completes; returns the new version.
    async fn complete(&mut self, last: Vec<u8>) -> Result<Option<String>, FileError> {
        if !last.is_empty() || self.parts.is_empty() {
            self.part(last).await?;
        }
        let Some(id) = &self.id else {
            return Err(FileError::S3("multipart upload was never created".into()));
        };
        let done = self
            .deps
            .s3
            .complete_multipart_upload()
            .bucket(&self.deps.config.imports_bucket)
            .key(self.key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| FileError::S3(error_text(&e)))?;
        self.id = None;
        Ok(done.version_id().map(str::to_owned))
    }

    /// Aborts an unfinished upload; a failed abort leaves parts the bucket's
    /// AbortIncompleteMultipartUpload lifecycle rule removes.
    async fn abort(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        if let Err(err) = self
            .deps
            .s3
            .abort_multipart_upload()
            .bucket(&self.deps.config.imports_bucket)
            .key(self.key)
            .upload_id(&id)
            .send()
            .await
        {
            tracing::warn!(error = %error_text(&err), "aborting a multipart upload failed");
        }
    }
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

    fn split(
        key: &str,
        bytes: &[u8],
        matcher: &SubjectMatcher<'_>,
        chunk: usize,
    ) -> (Vec<Map<String, Value>>, Vec<u8>, u64) {
        let mut filter = RowFilter::new(format_of(key), matcher, true);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            filter.push(piece, &mut out).unwrap();
        }
        filter.finish(&mut out).unwrap();
        (filter.matched, out, filter.kept_rows)
    }

    /// Rows are found by every identifier the import indexed them by: aliased
    /// headers, one level of nesting, and the fields the import declared.
    #[test]
    fn rows_are_found_by_aliased_nested_and_declared_identifiers() {
        let key = key();
        let ann = |id: Identifier| key.pseudonym(&id).to_string();
        let pseudonyms: HashSet<String> = [
            ann(Identifier::email("ann@example.com").unwrap()),
            ann(Identifier::contact_id("hl-ann").unwrap()),
        ]
        .into();
        let rules = custody::imports::RowRules {
            identifiers: Some(custody::imports::IdentifierFields {
                email: vec!["/payload/customer/mail".into(), "Kundenmail".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let matcher = SubjectMatcher {
            key: &key,
            pseudonyms: &pseudonyms,
            rules: rules.clone(),
        };
        // Aliased CSV headers, and a declared column of any name.
        let csv = "Name,Customer Email,Kundenmail\nAnn,ANN@example.com,\nBob,bob@example.com,\nAnn2,,ann@example.com\n";
        let (matched, kept, _) = split("imports/acme/x/upload.csv", csv.as_bytes(), &matcher, 7);
        assert_eq!(matched.len(), 2);
        assert_eq!(
            String::from_utf8(kept).unwrap(),
            "Name,Customer Email,Kundenmail\nBob,bob@example.com,\n"
        );
        // Nested objects: by default (`contact.id`) and by a declared pointer.
        let jsonl = concat!(
            "{\"contact\":{\"id\":\"hl-ann\"},\"n\":1}\n",
            "{\"contact\":{\"id\":\"hl-bob\"},\"n\":2}\n",
            "{\"payload\":{\"customer\":{\"mail\":\"Ann@Example.com\"}},\"n\":3}\n",
            "{\"payload\":{\"customer\":{\"mail\":\"bob@example.com\"}},\"n\":4}\n",
        );
        let (matched, kept, kept_rows) =
            split("imports/acme/x/upload.jsonl", jsonl.as_bytes(), &matcher, 5);
        let numbers: Vec<&Value> = matched.iter().map(|row| &row["n"]).collect();
        assert_eq!(numbers, vec![1, 3]);
        assert_eq!(kept_rows, 2);
        assert!(!String::from_utf8(kept).unwrap().contains("hl-ann"));
        // Without the declaration the pointer's row is not Ann's: it is the rules
        // that find it, as they did when the import indexed it.
        let undeclared = SubjectMatcher {
            key: &key,
            pseudonyms: &pseudonyms,
            rules: Default::default(),
        };
        let (matched, _, _) = split(
            "imports/acme/x/upload.jsonl",
            jsonl.as_bytes(),
            &undeclared,
            64,
        );
        assert_eq!(matched.len(), 1);
        // The import indexed each of these rows under the same pseudonyms.
        for line in jsonl.lines().step_by(2) {
            let row: Map<String, Value> = serde_json::from_str(line).unwrap();
            let ids = rules.check(&row).unwrap();
            assert!(
                ids.iter().all(|id| pseudonyms.contains(&ann(id.clone()))),
                "{line}"
            );
        }
    }

    #[test]
    fn csv_and_jsonl_rows_of_the_subject_are_split_off_byte_for_byte() {
        let key = key();
        let pseudonyms: HashSet<String> = [key
            .pseudonym(&Identifier::email("Ann@Example.com").unwrap())
            .to_string()]
        .into();
        let matcher = SubjectMatcher {
            key: &key,
            pseudonyms: &pseudonyms,
            rules: Default::default(),
        };
        // A quoted field holding newlines (and an escaped quote), the subject's rows
        // at the start, middle and end, CRLF endings and no final newline.
        let csv = "\u{feff}name,Email,phone\r\nAnn,ANN@example.com ,+44 7700 900001\r\nBob,bob@example.com,\r\n\"Quoted,\nCarl \"\"C\"\"\",carl@example.com,\r\n\"Ann\nagain\",ann@example.com,\r\n\r\nDee,dee@example.com,\r\nAnn,ann@EXAMPLE.com,";
        let expected = "\u{feff}name,Email,phone\r\nBob,bob@example.com,\r\n\"Quoted,\nCarl \"\"C\"\"\",carl@example.com,\r\n\r\nDee,dee@example.com,\r\n";
        // Every chunk size, so every boundary falls inside a quote, a CRLF and a BOM.
        for chunk in 1..=csv.len() {
            let (matched, kept, kept_rows) =
                split("imports/acme/x/upload.csv", csv.as_bytes(), &matcher, chunk);
            assert_eq!(matched.len(), 3, "chunk {chunk}");
            assert_eq!(matched[1]["name"], "Ann\nagain");
            assert_eq!(kept_rows, 3);
            assert_eq!(String::from_utf8(kept).unwrap(), expected, "chunk {chunk}");
        }

        let jsonl = "{\"email\":\"ann@example.com\",\"n\":1}\n{\"email\":\"bob@example.com\"}\n\nnot json\n{\"email\":\"ANN@example.com\"}";
        for chunk in 1..=jsonl.len() {
            let (matched, kept, _) = split(
                "imports/acme/x/rows/00000001.jsonl",
                jsonl.as_bytes(),
                &matcher,
                chunk,
            );
            assert_eq!(matched.len(), 2);
            assert_eq!(
                String::from_utf8(kept).unwrap(),
                "{\"email\":\"bob@example.com\"}\n\nnot json\n"
            );
        }
    }

    /// Rectifying: the subject's rows get the corrected value where the old one was
    /// (a column, a nested field, a declared pointer, a BOM and line endings kept),
    /// every other row passes byte for byte, at every chunk size.
    #[test]
    fn rectifying_corrects_the_subjects_fields_and_keeps_other_rows() {
        let key = key();
        let old = key
            .pseudonym(&Identifier::email("ann@example.com").unwrap())
            .to_string();
        let phone = key
            .pseudonym(&Identifier::phone("+447700900001", None).unwrap())
            .to_string();
        let pseudonyms: HashSet<String> = [old.clone(), phone].into();
        let matcher = SubjectMatcher {
            key: &key,
            pseudonyms: &pseudonyms,
            rules: custody::imports::RowRules {
                identifiers: Some(custody::imports::IdentifierFields {
                    email: vec!["/payload/mails/1".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let corrections = Corrections {
            values: vec![(IdentifierKind::Email, old, "ann.new@example.com".into())],
        };
        let run = |name: &str, bytes: &[u8], chunk: usize| {
            let mut filter = RowFilter::rectifying(format_of(name), &matcher, &corrections);
            let mut out = Vec::new();
            for piece in bytes.chunks(chunk) {
                filter.push(piece, &mut out).unwrap();
            }
            filter.finish(&mut out).unwrap();
            (String::from_utf8(out).unwrap(), filter.rows_rectified)
        };
        // Ann by email (two cases), by phone only (another email stays), others.
        let csv = "\u{feff}name,Email,phone\r\n\"Ann, A\",ANN@example.com ,\r\nBob,bob@example.com,\r\n\"Quoted\nCarl\",carl@example.com,\r\nAnn W,work@example.com,+44 7700 900001\r\nAnn,ann@example.com,";
        let expected = "\u{feff}name,Email,phone\r\n\"Ann, A\",ann.new@example.com,\r\nBob,bob@example.com,\r\n\"Quoted\nCarl\",carl@example.com,\r\nAnn W,work@example.com,+44 7700 900001\r\nAnn,ann.new@example.com,";
        for chunk in 1..=csv.len() {
            let (out, rows) = run("imports/acme/x/upload.csv", csv.as_bytes(), chunk);
            assert_eq!(out, expected, "chunk {chunk}");
            assert_eq!(rows, 2);
        }
        let jsonl = concat!(
            "{\"contact\":{\"email\":\"Ann@Example.com\",\"n\":1}}\n",
            "{ \"email\" : \"bob@example.com\" }\n",
            "{\"payload\":{\"mails\":[\"x@example.com\",\"ann@example.com\"]}}\n",
            "not json\n",
        );
        for chunk in [1, 7, jsonl.len()] {
            let (out, rows) = run(
                "imports/acme/x/rows/00000001.jsonl",
                jsonl.as_bytes(),
                chunk,
            );
            assert_eq!(rows, 2);
            assert_eq!(
                out,
                concat!(
                    "{\"contact\":{\"email\":\"ann.new@example.com\",\"n\":1}}\n",
                    "{ \"email\" : \"bob@example.com\" }\n",
                    "{\"payload\":{\"mails\":[\"x@example.com\",\"ann.new@example.com\"]}}\n",
                    "not json\n",
                ),
                "chunk {chunk}"
            );
        }
        // Debug never shows a corrected value.
        assert!(!format!("{corrections:?}").contains("ann.new"));
    }

    #[test]
    fn an_unclosed_quote_or_runaway_row_fails_instead_of_buffering_the_file() {
        let key = key();
        let pseudonyms = HashSet::new();
        let matcher = SubjectMatcher {
            key: &key,
            pseudonyms: &pseudonyms,
            rules: Default::default(),
        };
        let mut filter = RowFilter::new(Format::Csv, &matcher, false);
        let mut out = Vec::new();
        filter.push(b"a,b\n1,\"open\n", &mut out).unwrap();
        assert!(filter.finish(&mut out).is_err());
        let mut filter = RowFilter::new(Format::Csv, &matcher, false);
        let mut failed = false;
        for _ in 0..100 {
            if filter.push(&[b'x'; 4096], &mut out).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a row past {MAX_ROW_BYTES} bytes is refused");
        assert!(filter.carried() <= MAX_ROW_BYTES + 4096);
    }

    /// Memory is bounded by the part and chunk sizes, not the file: a file over 1,000
    /// chunks and three parts long goes through holding at most one part, two chunks
    /// and a row.
    /// Every part but the last meets S3's 5 MiB minimum.
    #[test]
    fn the_rewriter_buffers_at_most_a_part_and_parts_meet_the_5_mib_rule() {
        let key = key();
        let pseudonyms: HashSet<String> = [key
            .pseudonym(&Identifier::email("ann@example.com").unwrap())
            .to_string()]
        .into();
        let matcher = SubjectMatcher {
            key: &key,
            pseudonyms: &pseudonyms,
            rules: Default::default(),
        };
        let streaming = Streaming {
            chunk_bytes: 16 * 1024,
            // Below S3's minimum: the rewriter must raise it.
            part_bytes: 1024,
        };
        let mut rewriter = Rewriter::new(RowFilter::new(Format::Csv, &matcher, false), streaming);
        let mut row = 0u64;
        let mut produced = 0usize;
        let mut input = 0usize;
        let mut parts = Vec::new();
        let mut chunk = Vec::new();
        let target = 3 * MIN_PART_BYTES + MIN_PART_BYTES / 2;
        chunk.extend_from_slice(b"name,email,note\n");
        while input < target {
            while chunk.len() < streaming.chunk_bytes {
                row += 1;
                // Most rows name no one; long rows keep the row count (and the debug
                // build's per-row parsing) small while the bytes reach several parts.
                let email = if row.is_multiple_of(50) {
                    "ann@example.com"
                } else {
                    ""
                };
                let note = "a, b ".repeat(400);
                chunk.extend_from_slice(
                    format!("\"Person\n{row}\",{email},\"{note}\"\n").as_bytes(),
                );
            }
            let piece: Vec<u8> = chunk.drain(..streaming.chunk_bytes).collect();
            input += piece.len();
            if let Some(part) = rewriter.push(&piece).unwrap() {
                produced += part.len();
                parts.push(part.len());
            }
        }
        if let Some(p) = rewriter.push(&chunk).unwrap() {
            produced += p.len();
            parts.push(p.len());
        }
        input += chunk.len();
        let last = rewriter.finish().unwrap();
        produced += last.len();
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(parts.iter().all(|&len| len >= MIN_PART_BYTES), "{parts:?}");
        let removed = rewriter.filter.rows_removed;
        assert_eq!(removed, row / 50);
        // Each removed row is about 2 KiB.
        assert!(produced < input && produced > input - 4096 * removed as usize);
        assert!(
            rewriter.peak_buffered <= streaming.memory_bound(),
            "{} > {}",
            rewriter.peak_buffered,
            streaming.memory_bound()
        );
        assert!(input > 1000 * streaming.chunk_bytes);
        assert!(input > 3 * streaming.memory_bound());
    }
}
