//! DSAR erasure inside one large import file: a data subject named by
//! [`SUBJECT_ROWS`] rows of a generated CSV of N bytes, erased through the dsar
//! function's own `process_request` (what the stream trigger runs on an erasure
//! request). The function streams the object (`dsar::files`: a counting read, then a
//! read through `RowFilter`/`Rewriter` and a multipart upload of what is kept), so
//! its memory should be bounded by `Streaming::memory_bound`, not by N. Goal: peak
//! RSS ≤ 64 MB at every size.
//!
//! The file is generated deterministically and uploaded with a multipart upload of
//! 8 MiB parts by a process of its own (`custody-bench seed-import-csv …`), so
//! neither the file nor its upload is ever in the measured process. The measured
//! process (`custody-bench workload dsar-erasure N`) provisions its stack, writes
//! the subject's index entry, files the request through its HTTP route, then resets
//! its peak RSS (`/proc/self/clear_refs`) and times the processing alone.

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use custody::privacy::{PrivacyRequest, Status};
use custody::subject::Identifier;
use custody::subject_index::{Source, SubjectRef};
use custody::tenant::TenantId;
use custody_local::harness::TestStack;
use dsar::files::Streaming;
use dsar::{Budget, Deps, DsarConfig, Progress};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::BenchError;
use crate::request_count::{RequestCounter, counted_dynamodb};

const TENANT: &str = "acme";
const EMAIL: &str = "bench.subject@example.com";
/// A custody import id (26 characters of Crockford base32), so the object key has
/// custody's layout (`imports/<tenant>/<import>/upload.csv`).
const IMPORT: &str = "01JHBENCHDSAR0000000000000";
/// Rows of the file that name the subject, spread evenly through it whatever its size.
pub const SUBJECT_ROWS: u64 = 10;
/// Parts of the seeding upload (S3's minimum is 5 MiB for all but the last).
const SEED_PART_BYTES: usize = 8 * 1024 * 1024;
/// The peak-RSS goal of this row, in bytes (64 MB).
pub const GOAL_BYTES: u64 = 64_000_000;

const DELETE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/dsar-api/post_privacy_delete.json"
));

fn failed(what: &str, err: impl std::fmt::Display) -> BenchError {
    BenchError::Measurement(format!("dsar-erasure workload: {what}: {err}"))
}

/// A CSV of at least `target` bytes (`id,email,name,company,city,note`), the same
/// bytes on every run: every row names one person by email, every 50th row has a
/// quoted newline in its note, and [`SUBJECT_ROWS`] rows, at (k + ½)/10 of the file,
/// name the subject (in mixed case, as an import would have seen it).
pub struct CsvGenerator {
    target: u64,
    pub written: u64,
    pub rows: u64,
    pub subject_rows: u64,
    /// Bytes of the subject's rows: what the rewritten file must be shorter by.
    pub subject_bytes: u64,
}

impl CsvGenerator {
    const HEADER: &'static [u8] = b"id,email,name,company,city,note\r\n";

    pub fn new(target: u64) -> Self {
        Self {
            target,
            written: 0,
            rows: 0,
            subject_rows: 0,
            subject_bytes: 0,
        }
    }

    pub fn done(&self) -> bool {
        self.written >= self.target && self.subject_rows == SUBJECT_ROWS
    }

    /// Appends whole rows to `buf` until it holds at least `up_to` bytes or the file
    /// is complete.
    pub fn fill(&mut self, buf: &mut Vec<u8>, up_to: usize) {
        if self.written == 0 {
            buf.extend_from_slice(Self::HEADER);
            self.written += Self::HEADER.len() as u64;
        }
        while buf.len() < up_to && !self.done() {
            let before = buf.len();
            let i = self.rows;
            let next_subject = (2 * self.subject_rows + 1) * self.target / (2 * SUBJECT_ROWS);
            let subject = self.subject_rows < SUBJECT_ROWS && self.written >= next_subject;
            // Writing to a Vec cannot fail.
            let _ = if subject {
                let email = if self.subject_rows.is_multiple_of(2) {
                    "Bench.Subject@Example.com"
                } else {
                    EMAIL
                };
                write!(
                    buf,
                    "row-{i},{email},Bench Subject,Bench Co,Bench City,\"note {i}, the subject's\"\r\n"
                )
            } else if i.is_multiple_of(50) {
                let person = i % 100_000;
                write!(
                    buf,
                    "row-{i},person{person}@example.com,Person {person},Company {},City {},\"note {i}\nsecond line, with a comma\"\r\n",
                    i % 997,
                    i % 113
                )
            } else {
                let person = i % 100_000;
                write!(
                    buf,
                    "row-{i},person{person}@example.com,Person {person},Company {},City {},\"note {i}, with a comma\"\r\n",
                    i % 997,
                    i % 113
                )
            };
            let len = (buf.len() - before) as u64;
            self.written += len;
            self.rows += 1;
            if subject {
                self.subject_rows += 1;
                self.subject_bytes += len;
            }
        }
    }
}

/// What the seeding process uploaded.
#[derive(Debug, Serialize, Deserialize)]
pub struct Seeded {
    pub file_bytes: u64,
    /// Data rows (not counting the header).
    pub rows: u64,
    pub subject_rows: u64,
    pub subject_bytes: u64,
    pub parts: u32,
    pub seconds: f64,
}

/// `custody-bench seed-import-csv <endpoint> <bucket> <key> <kms-key-id> <bytes>`:
/// generates the CSV part by part and uploads it as the import function stores an
/// upload (SSE-KMS, the import retention tag), holding one part at a time; prints
/// [`Seeded`] as JSON.
pub async fn seed_import_csv(args: &[String]) -> Result<(), BenchError> {
    let [endpoint, bucket, key, kms_key, bytes] = args else {
        return Err(failed("seed-import-csv", "expected 5 arguments"));
    };
    let target: u64 = bytes.parse().map_err(|e| failed("size", e))?;
    let sdk = custody::aws::sdk_config_for_endpoint(endpoint, custody_local::REGION);
    let s3 = custody::aws::Clients::new(&sdk).s3;
    let started = Instant::now();
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type("text/csv")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(kms_key)
        .tagging("retention-class=import-30d")
        .send()
        .await
        .map_err(|e| failed("create multipart upload", custody::aws::error_text(&e)))?;
    let id = created
        .upload_id()
        .ok_or_else(|| failed("create multipart upload", "no upload id"))?
        .to_owned();
    let mut generator = CsvGenerator::new(target);
    let mut parts = Vec::new();
    while !generator.done() {
        let mut part = Vec::with_capacity(SEED_PART_BYTES + 1024);
        generator.fill(&mut part, SEED_PART_BYTES);
        let number = parts.len() as i32 + 1;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(number)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(|e| failed("upload part", custody::aws::error_text(&e)))?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
    }
    let count = parts.len() as u32;
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| failed("complete multipart upload", custody::aws::error_text(&e)))?;
    let seeded = Seeded {
        file_bytes: generator.written,
        rows: generator.rows,
        subject_rows: generator.subject_rows,
        subject_bytes: generator.subject_bytes,
        parts: count,
        seconds: started.elapsed().as_secs_f64(),
    };
    println!(
        "{}",
        serde_json::to_string(&seeded).map_err(|e| failed("seeded", e))?
    );
    Ok(())
}

/// Runs the seeding process and reads what it uploaded.
async fn seed(stack: &TestStack, key: &str, bytes: u64) -> Result<Seeded, BenchError> {
    let exe = std::env::current_exe().map_err(|e| failed("own path", e))?;
    let output = tokio::process::Command::new(exe)
        .args([
            "seed-import-csv",
            &stack.endpoint,
            &stack.config.imports_bucket,
            key,
            &stack.config.data_key_id,
            &bytes.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| failed("seeding process", e))?;
    if !output.status.success() {
        return Err(failed(
            "seeding process",
            String::from_utf8_lossy(&output.stderr).trim(),
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| failed("seeding process output", e))
}

pub async fn run(bytes: u64) -> Result<Value, BenchError> {
    let stack = TestStack::new().await;
    let counter = RequestCounter::default();
    let mut clients = stack.clients.clone();
    clients.dynamodb = counted_dynamodb(&stack.sdk, &counter);
    let app_secret = custody::subject::load_app_secret(
        &stack.clients.secrets,
        &stack.config.pseudonym_secret_id,
    )
    .await
    .map_err(|e| failed("app secret", e))?;
    let deps = Deps::new(
        stack.config.clone(),
        DsarConfig {
            link_ttl: Duration::from_secs(300),
            egress: custody::egress::EgressPolicy::LOCAL,
            oauth_function: "custody-oauth-bench".into(),
            // No wait before the purge's final sweep (tests of the wait set their own).
            purge_grace: chrono::Duration::zero(),
            notice_email_sender: None,
        },
        &clients,
        app_secret,
        custody::http::client(custody::egress::EgressPolicy::LOCAL)
            .map_err(|e| failed("http client", e))?,
        TestStack::system_clock(),
    );
    let tenant = TenantId::parse(TENANT).map_err(|e| failed("tenant", e))?;
    let key = format!("imports/{TENANT}/{IMPORT}/upload.csv");

    // In a process of its own: the file never passes through this one.
    let seeded = seed(&stack, &key, bytes).await?;

    // The index entry the import wrote for the subject's rows of this object.
    let email = Identifier::email(EMAIL).map_err(|e| failed("identifier", e))?;
    let pseudonym = deps
        .pseudonym_key(&tenant)
        .await
        .map_err(|e| failed("pseudonym key", e))?
        .pseudonym(&email)
        .to_string();
    let subject_ref = SubjectRef {
        tenant: tenant.clone(),
        pseudonym,
        source: Source::ImportObject,
        source_id: format!("{IMPORT}/upload.csv"),
        object_key: Some(key.clone()),
        count: seeded.subject_rows,
        expires_at: Some((chrono::Utc::now() + chrono::Duration::days(30)).timestamp()),
    };
    deps.store
        .put(&subject_ref)
        .await
        .map_err(|e| failed("subject ref", e))?;
    let filed = super::dsar::call(
        &deps,
        DELETE,
        json!({ "subject": { "email": EMAIL }, "regulation": "gdpr" }),
    )
    .await?;
    let id = filed["id"]
        .as_str()
        .ok_or_else(|| failed("delete filed", &filed))?
        .to_owned();

    // Everything before this point (provisioning, clients, filing) is set-up.
    let setup_peak = super::peak_rss_bytes();
    let reset = super::reset_peak_rss();
    let rss_before = super::rss_bytes();
    counter.reset();
    let started = Instant::now();
    let progress = dsar::process::process_request(&deps, &tenant, &id, Budget::Unlimited)
        .await
        .map_err(|e| failed("process_request", e))?;
    let elapsed = started.elapsed();
    let erasure_peak = super::peak_rss_bytes();
    let requests = counter.count();
    if progress != Progress::Finished(Status::Complete) {
        return Err(failed("erasure", format!("ended {progress:?}")));
    }

    let request = deps
        .store
        .get::<PrivacyRequest>(&PrivacyRequest::key_of(&tenant, &id))
        .await
        .map_err(|e| failed("read the finished request", e))?
        .ok_or_else(|| failed("read the finished request", "gone"))?;
    let erased = request
        .erased
        .as_ref()
        .ok_or_else(|| failed("finished request", "no erasure counts"))?;
    let head = deps
        .s3
        .head_object()
        .bucket(&deps.config.imports_bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| failed("head rewritten object", custody::aws::error_text(&e)))?;
    let rewritten_bytes = head.content_length().unwrap_or(-1);
    let expected = seeded.file_bytes - seeded.subject_bytes;
    // A run that found nothing, or lost rows, must not pass for a fast one.
    if erased.import_rows != seeded.subject_rows
        || erased.import_objects != 1
        || u64::try_from(rewritten_bytes).ok() != Some(expected)
    {
        return Err(failed(
            "erasure result",
            format!(
                "erased {erased:?}; rewritten object {rewritten_bytes} bytes, expected {expected}"
            ),
        ));
    }
    let rewrite_parts = head
        .e_tag()
        .and_then(|etag| etag.trim_matches('"').rsplit_once('-'))
        .and_then(|(_, n)| n.parse::<u64>().ok());

    let seconds = elapsed.as_secs_f64();
    let mut metrics = json!({
        "file_bytes": seeded.file_bytes,
        "rows": seeded.rows,
        "subject_rows_seeded": seeded.subject_rows,
        "seed_parts": seeded.parts,
        "seed_s": seeded.seconds,
        "erased": erased,
        "rewritten_bytes": rewritten_bytes,
        "rewrite_parts": rewrite_parts,
        "erase_s": seconds,
        "mb_per_s": seeded.file_bytes as f64 / 1e6 / seconds,
        "erase_dynamodb_requests": requests,
        "erase_operations": counter.operations(),
        // The function's own bound for its buffers (dsar::files::Streaming).
        "streaming_memory_bound_bytes": Streaming::default().memory_bound(),
        "peak_rss_reset": reset,
        "rss_before_erasure_bytes": rss_before,
        "setup_peak_rss_bytes": setup_peak,
        "goal_bytes": GOAL_BYTES,
    });
    if let (Some(object), Some(peak)) = (metrics.as_object_mut(), erasure_peak) {
        object.insert("erasure_peak_rss_bytes".into(), peak.into());
        object.insert("within_goal".into(), (peak <= GOAL_BYTES).into());
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(target: u64, part: usize) -> (Vec<u8>, CsvGenerator) {
        let mut generator = CsvGenerator::new(target);
        let mut file = Vec::new();
        while !generator.done() {
            let mut buf = Vec::new();
            generator.fill(&mut buf, part);
            file.extend_from_slice(&buf);
        }
        (file, generator)
    }

    #[test]
    fn the_generated_file_is_the_same_in_any_part_size_and_names_the_subject_ten_times() {
        let (whole, generator) = generate(200_000, usize::MAX);
        let (parted, _) = generate(200_000, 4096);
        assert_eq!(whole, parted);
        assert_eq!(generator.written, whole.len() as u64);
        assert!(whole.len() as u64 >= 200_000 && whole.len() < 200_200);
        let text = String::from_utf8(whole).unwrap();
        let subject = text
            .split("\r\n")
            .filter(|row| row.to_ascii_lowercase().contains(EMAIL))
            .count();
        assert_eq!(subject as u64, SUBJECT_ROWS);
        assert_eq!(generator.subject_rows, SUBJECT_ROWS);
        // Even a file smaller than ten rows names the subject ten times.
        let (_, tiny) = generate(10, usize::MAX);
        assert_eq!(tiny.subject_rows, SUBJECT_ROWS);
    }
}
