//! Import throughput (issue 8, item 4): a generated CSV uploaded with the presigned
//! PUT the import API hands out, then processed through the function's S3-event
//! entry point (`import::process::handle_s3`) to a `DestinationSim`: rows/s and the
//! peak RSS of processing.
//!
//! Two baselines, measured in the same run after the processing (so the processing
//! peak is untouched): the bare streaming read (`GetObject` of the very same object
//! version from the same emulator, the body read to its end, bytes counted, nothing
//! parsed) and the parse and validation from memory (the same CSV bytes through
//! `custody::imports::RowReader` with the import's own format and rules, the
//! per-row path the function's `stream_rows` runs, without I/O).
//!
//! The destination verifies and parses every batch it accepts and keeps their sizes
//! (`DestinationSim::start_counting`; with `CUSTODY_BENCH_DESTINATION_KEEP=1` it keeps
//! every row, as the tests' receiver does, for comparing with earlier runs), and it
//! runs in its own process (`custody-bench sim-destination`): its memory is not the
//! function's. The CSV is
//! generated and uploaded before the measurement, and the peak RSS is reset
//! (`/proc/self/clear_refs`) once the buffer is freed, so the number is processing
//! alone.

use std::process::Stdio;
use std::time::{Duration, Instant};

use custody::imports::{ParsedRow, RowForm, RowReader};
use custody::tenant::TenantId;
use custody::webhook::RetryPolicy;
use custody_local::harness::TestStack;
use custody_sim::destination::DestinationSim;
use import::http::Created;
use import::{Deps, Settings};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::BenchError;

const SECRET: &str = "whsec_bench_0123456789abcdef0123456789abcdef";
const TENANT: &str = "acme";
/// Distinct people the rows name (by email): fewer than the subject counter holds
/// per round (10 000), so the index gets one write per person per file and the run
/// measures the streaming path. With 10 000 distinct people or more, every round
/// fills and each row costs about one DynamoDB write, which on the emulator
/// dominates (docs/PERFORMANCE.md, Findings).
const DISTINCT_SUBJECTS: u64 = 1_000;

const CREATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/import/create.json"
));
const S3_CREATED: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/import/s3_object_created.json"
));

fn failed(what: &str, err: impl std::fmt::Display) -> BenchError {
    BenchError::Measurement(format!("import workload: {what}: {err}"))
}

pub async fn run(rows: u64) -> Result<Value, BenchError> {
    let stack = TestStack::new().await;
    let app_secret = custody::subject::load_app_secret(
        &stack.clients.secrets,
        &stack.config.pseudonym_secret_id,
    )
    .await
    .map_err(|e| failed("app secret", e))?;
    let deps = Deps::new(
        stack.config.clone(),
        Settings {
            egress: custody::egress::EgressPolicy::LOCAL,
            retry: RetryPolicy::default(),
        },
        &stack.clients,
        custody::http::client(custody::egress::EgressPolicy::LOCAL)
            .map_err(|e| failed("http client", e))?,
        app_secret,
        TestStack::system_clock(),
    );

    let exe = std::env::current_exe().map_err(|e| failed("own path", e))?;
    let mut destination = tokio::process::Command::new(exe)
        .arg("sim-destination")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed("destination process", e))?;
    let mut out = BufReader::new(
        destination
            .stdout
            .take()
            .ok_or_else(|| failed("destination", "no stdout"))?,
    );
    let mut url = String::new();
    out.read_line(&mut url)
        .await
        .map_err(|e| failed("destination url", e))?;
    let url = url.trim().to_owned();

    let csv = generate_csv(rows);
    let bytes = csv.len();
    let body = json!({
        "format": "csv",
        "mode": "store",
        "retention_class": "import-30d",
        "destination": {"url": url, "secret": SECRET},
        "size": bytes,
    });
    let created = create(&deps, &body).await?;
    let version = upload(&created, csv).await?;
    let key = format!("imports/{TENANT}/{}/upload.csv", created.import.id);
    crate::workloads::reset_peak_rss();

    let started = Instant::now();
    import::process::handle_s3(
        &deps,
        s3_event(&deps, &key, &version, bytes)?,
        Duration::from_secs(3600),
    )
    .await
    .map_err(|e| failed("handle_s3", e))?;
    let elapsed = started.elapsed();
    let peak = crate::workloads::peak_rss_bytes();

    let tenant = TenantId::parse(TENANT).map_err(|e| failed("tenant", e))?;
    let import = deps
        .imports
        .get(&tenant, &created.import.id)
        .await
        .map_err(|e| failed("import record", e))?
        .ok_or_else(|| failed("import record", "gone"))?;
    drop(destination.stdin.take());
    let mut received = String::new();
    out.read_to_string(&mut received)
        .await
        .map_err(|e| failed("destination report", e))?;
    let _ = destination.wait().await;
    let received: Value =
        serde_json::from_str(received.trim()).map_err(|e| failed("destination report", e))?;

    // The baselines, after the processing peak was read.
    let bare = bare_read(&deps, &key, &version).await?;
    if bare.bytes != bytes as u64 {
        return Err(failed(
            "bare read",
            format!("read {} bytes of a {bytes}-byte object", bare.bytes),
        ));
    }
    let csv = generate_csv(rows);
    let parse = parse_validate(&csv, &import, RowForm::Subjects)?;
    let encode = parse_validate(&csv, &import, RowForm::Json)?;
    // Every row built as a map: what both passes did before `RowForm`.
    let map = parse_validate(&csv, &import, RowForm::Map)?;
    drop(csv);
    for pass in [&parse, &encode, &map] {
        if pass.valid != rows {
            return Err(failed(
                "parse and validate",
                format!("{} valid rows of {rows}", pass.valid),
            ));
        }
    }

    let seconds = elapsed.as_secs_f64();
    let rows_per_s = rows as f64 / seconds;
    let bare_s = bare.elapsed.as_secs_f64();
    let bare_rows_per_s = rows as f64 / bare_s;
    let mut metrics = json!({
        "rows": rows,
        "csv_bytes": bytes,
        "distinct_subjects": DISTINCT_SUBJECTS.min(rows),
        "status": import.status,
        "rows_total": import.rows_total,
        "rows_valid": import.rows_valid,
        "rows_delivered": import.rows_delivered,
        "batches_delivered": import.batches_delivered,
        "destination_rows_accepted": received["rows"],
        "seconds": seconds,
        "rows_per_s": rows_per_s,
        "bare_read_seconds": bare_s,
        "bare_read_rows_per_s": bare_rows_per_s,
        "bare_read_mb_per_s": bytes as f64 / 1e6 / bare_s,
        "import_vs_bare_read": rows_per_s / bare_rows_per_s,
        "parse_validate_seconds": parse.elapsed.as_secs_f64(),
        "parse_validate_rows_per_s": rows as f64 / parse.elapsed.as_secs_f64(),
        // The delivery pass's parse: the same, each row also encoded as JSON.
        "parse_encode_seconds": encode.elapsed.as_secs_f64(),
        "parse_encode_rows_per_s": rows as f64 / encode.elapsed.as_secs_f64(),
        // Per second of the parsing thread's CPU: the same on a busy machine as on an
        // idle one, where it equals the wall-clock rate (one thread, no I/O).
        "parse_validate_cpu_seconds": parse.cpu.map(|c| c.as_secs_f64()),
        "parse_validate_rows_per_cpu_s": parse.cpu.map(|c| rows as f64 / c.as_secs_f64()),
        "parse_encode_rows_per_cpu_s": encode.cpu.map(|c| rows as f64 / c.as_secs_f64()),
        "parse_map_rows_per_s": rows as f64 / map.elapsed.as_secs_f64(),
        "parse_map_rows_per_cpu_s": map.cpu.map(|c| rows as f64 / c.as_secs_f64()),
        // The parsed bytes are the uploaded ones: their hash is the one the import recorded.
        "parse_validate_same_bytes": parse.sha256.is_some() && parse.sha256 == import.sha256,
    });
    // The processing peak: measured here, before run() adds the whole-process one.
    if let (Some(object), Some(peak)) = (metrics.as_object_mut(), peak) {
        object.insert("processing_peak_rss_bytes".into(), peak.into());
    }
    Ok(metrics)
}

/// The bare streaming read: one `GetObject` of the object version, its body read to
/// the end; nothing parsed or kept.
struct BareRead {
    bytes: u64,
    elapsed: Duration,
}

async fn bare_read(deps: &Deps, key: &str, version: &str) -> Result<BareRead, BenchError> {
    let started = Instant::now();
    let mut body = deps
        .imports
        .s3()
        .get_object()
        .bucket(deps.imports.bucket())
        .key(key)
        .version_id(version)
        .send()
        .await
        .map_err(|e| failed("bare read", custody::aws::error_text(&e)))?
        .body;
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        bytes += chunk.map_err(|e| failed("bare read", e))?.len() as u64;
    }
    Ok(BareRead {
        bytes,
        elapsed: started.elapsed(),
    })
}

/// The parse and validation from memory: every row of `csv` through the reader the
/// function's `stream_rows` runs, with the import's format and rules (the SHA-256
/// of the bytes, computed on the way as in the function, included), in the form
/// one of its passes asks for: subjects only (validation and indexing) or each row
/// encoded as JSON (delivery).
struct Parsed {
    valid: u64,
    sha256: Option<String>,
    elapsed: Duration,
    /// The thread's CPU time for the pass, where the platform tells it.
    cpu: Option<Duration>,
}

fn parse_validate(
    csv: &[u8],
    import: &custody::imports::Import,
    form: RowForm,
) -> Result<Parsed, BenchError> {
    let started = Instant::now();
    let cpu_before = crate::workloads::thread_cpu_time();
    let mut reader = RowReader::new(csv, import.format, import.rules()).with_form(form);
    let mut valid = 0u64;
    for item in reader.by_ref() {
        match item.map_err(|e| failed("parse and validate", e))? {
            ParsedRow::Valid { .. } => valid += 1,
            ParsedRow::Invalid(error) => {
                return Err(failed("parse and validate", format!("{error:?}")));
            }
        }
    }
    let scanned = reader.scanned();
    let elapsed = started.elapsed();
    let cpu = cpu_before
        .zip(crate::workloads::thread_cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    Ok(Parsed {
        valid,
        sha256: scanned.map(|s| s.sha256),
        elapsed,
        cpu,
    })
}

/// `rows` valid rows, each naming a subject by email.
fn generate_csv(rows: u64) -> Vec<u8> {
    let mut csv = String::with_capacity(rows as usize * 64 + 64);
    csv.push_str("id,email,name,note\r\n");
    for i in 0..rows {
        let person = i % DISTINCT_SUBJECTS;
        csv.push_str(&format!(
            "row-{i},person{person}@example.com,Person {person},\"note {i}, with comma\"\r\n"
        ));
    }
    csv.into_bytes()
}

async fn create(deps: &Deps, body: &Value) -> Result<Created, BenchError> {
    let mut event: Value = serde_json::from_str(CREATE).map_err(|e| failed("event file", e))?;
    event["body"] = json!(body.to_string());
    if let Some(headers) = event["headers"].as_object_mut() {
        headers.remove("content-length");
    }
    let request =
        lambda_http::request::from_str(&event.to_string()).map_err(|e| failed("event", e))?;
    let response = import::http::handle(deps, request).await;
    let status = response.status();
    let text = match response.body() {
        lambda_http::Body::Text(text) => text.clone(),
        _ => String::new(),
    };
    if !status.is_success() {
        return Err(failed("POST /imports", format!("{status}: {text}")));
    }
    serde_json::from_str(&text).map_err(|e| failed("created", e))
}

/// The presigned PUT, as a client would send it; returns the object version.
async fn upload(created: &Created, content: Vec<u8>) -> Result<String, BenchError> {
    let upload = created
        .upload
        .as_ref()
        .ok_or_else(|| failed("create", "no upload URL"))?;
    let client = custody::http::client(custody::egress::EgressPolicy::LOCAL)
        .map_err(|e| failed("http client", e))?;
    let mut request = client.put(&upload.url).body(content);
    for (name, value) in &upload.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|e| failed("upload", e))?;
    if !response.status().is_success() {
        return Err(failed("upload", response.status()));
    }
    response
        .headers()
        .get("x-amz-version-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| failed("upload", "no version id"))
}

fn s3_event(
    deps: &Deps,
    key: &str,
    version: &str,
    size: usize,
) -> Result<aws_lambda_events::s3::S3Event, BenchError> {
    let mut event: Value = serde_json::from_str(S3_CREATED).map_err(|e| failed("event file", e))?;
    let bucket = &deps.config.imports_bucket;
    let record = &mut event["Records"][0];
    record["s3"]["bucket"]["name"] = json!(bucket);
    record["s3"]["bucket"]["arn"] = json!(format!("arn:aws:s3:::{bucket}"));
    record["s3"]["object"]["key"] = json!(key);
    record["s3"]["object"]["versionId"] = json!(version);
    record["s3"]["object"]["size"] = json!(size);
    serde_json::from_value(event).map_err(|e| failed("S3 event", e))
}

/// Makes the bench's destination keep every row, as runs before `start_counting` did.
pub const DESTINATION_KEEP_ENV: &str = "CUSTODY_BENCH_DESTINATION_KEEP";

/// `custody-bench sim-destination`: a `DestinationSim` in its own process; prints
/// its URL, serves until stdin closes, then prints what it accepted as JSON.
pub async fn serve_destination() -> Result<(), BenchError> {
    let destination = if std::env::var(DESTINATION_KEEP_ENV).as_deref() == Ok("1") {
        DestinationSim::start(SECRET).await
    } else {
        DestinationSim::start_counting(SECRET).await
    }
    .map_err(|e| failed("destination", e))?;
    println!("{}", destination.url());
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let summary = destination.summary();
    println!(
        "{}",
        json!({
            "requests": summary.requests,
            "batches": summary.batches,
            "rows": summary.rows,
        })
    );
    Ok(())
}
