//! The harness still works, at a tiny size. Benchmarks are not tests: nothing here
//! asserts a timing, only that a measurement came out.

use std::time::Duration;

use custody_bench::build::{BASELINE_BINARY, BASELINE_PACKAGE, Profile, host_binaries};
use custody_bench::cold_start::{self, Kind, Subject};
use custody_bench::discover::discover;
use custody_bench::repo_root;
use custody_bench::request_count::{RequestCounter, counted_dynamodb};

#[tokio::test]
async fn cold_start_of_the_bare_runtime_gives_a_number() {
    let workspace = discover(&repo_root()).unwrap();
    let program = host_binaries(
        &workspace,
        &[(BASELINE_PACKAGE.into(), BASELINE_BINARY.into())],
        Profile::Dev,
    )
    .unwrap()
    .remove(0);
    let subject = Subject {
        name: BASELINE_BINARY.into(),
        kind: Kind::RustBaseline,
        program,
        env: Vec::new(),
    };
    let measured = cold_start::measure(&[subject], 2, Duration::from_secs(20)).await;
    let (summary, samples) = measured[0].as_ref().unwrap();
    assert_eq!(summary.runs, 2);
    assert_eq!(samples.len(), 2);
    assert!(summary.median_ms > 0.0);
}

#[tokio::test]
async fn the_request_counter_counts_every_dynamodb_request() {
    let stack = custody_local::harness::TestStack::new().await;
    let counter = RequestCounter::default();
    let dynamodb = counted_dynamodb(&stack.sdk, &counter);
    dynamodb.list_tables().send().await.unwrap();
    dynamodb
        .describe_table()
        .table_name(&stack.config.table)
        .send()
        .await
        .unwrap();
    assert_eq!(counter.count(), 2);
    counter.reset();
    assert_eq!(counter.count(), 0);
}

/// Each throughput workload, at a tiny size, through the same child process
/// `make bench` runs (`custody-bench workload <name> <size>`): it must finish and
/// report the numbers its table row shows. Nothing about speed is asserted.
mod throughput {
    use std::path::Path;
    use std::time::Duration;

    use custody_bench::workloads::{Workload, in_child};
    use serde_json::Value;

    const HARNESS: &str = env!("CARGO_BIN_EXE_custody-bench");
    const LIMIT: Option<Duration> = Some(Duration::from_secs(300));

    fn run(workload: Workload, size: u64) -> Value {
        in_child(Path::new(HARNESS), workload, size, LIMIT)
            .unwrap_or_else(|err| panic!("{} workload at {size}: {err}", workload.name()))
    }

    fn number(metrics: &Value, field: &str) -> f64 {
        metrics[field]
            .as_f64()
            .unwrap_or_else(|| panic!("no number {field} in {metrics}"))
    }

    fn common(metrics: &Value) {
        assert!(number(metrics, "peak_rss_bytes") > 0.0, "{metrics}");
        assert_eq!(metrics["build_profile"], "dev", "{metrics}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn import_delivers_every_generated_row() {
        let metrics = tokio::task::spawn_blocking(|| run(Workload::Import, 2_000))
            .await
            .unwrap();
        common(&metrics);
        assert_eq!(metrics["status"], "delivered", "{metrics}");
        assert_eq!(metrics["rows_valid"], 2_000, "{metrics}");
        assert_eq!(metrics["rows_delivered"], 2_000, "{metrics}");
        assert_eq!(metrics["destination_rows_accepted"], 2_000, "{metrics}");
        assert!(number(&metrics, "rows_per_s") > 0.0, "{metrics}");
        assert!(number(&metrics, "processing_peak_rss_bytes") > 0.0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn dsar_counts_the_requests_of_an_export_and_an_erasure() {
        let metrics = tokio::task::spawn_blocking(|| run(Workload::Dsar, 200))
            .await
            .unwrap();
        common(&metrics);
        // 8 imported rows and 2 consents were seeded; the function must find them
        // all, and the bundle also lists the subject's privacy request itself.
        assert_eq!(metrics["subject_records_seeded"], 10, "{metrics}");
        assert_eq!(metrics["export_records_found"], 11, "{metrics}");
        assert_eq!(metrics["erased"]["import_rows"], 8, "{metrics}");
        assert_eq!(metrics["erased"]["consent_records"], 2, "{metrics}");
        assert!(number(&metrics, "table_items") >= 200.0, "{metrics}");
        for side in ["export", "erase"] {
            let total = number(&metrics, &format!("{side}_dynamodb_requests"));
            let by_operation: f64 = metrics[format!("{side}_operations")]
                .as_object()
                .unwrap_or_else(|| panic!("no {side}_operations in {metrics}"))
                .values()
                .filter_map(Value::as_f64)
                .sum();
            assert!(total > 0.0, "{metrics}");
            assert_eq!(total, by_operation, "{side}: total is the sum by operation");
            assert!(
                metrics[format!("{side}_operations")].get("Scan").is_none(),
                "{side} must not scan: {metrics}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn dsar_erasure_removes_the_subjects_rows_from_a_streamed_file() {
        let metrics = tokio::task::spawn_blocking(|| run(Workload::DsarErasure, 1_000_000))
            .await
            .unwrap();
        common(&metrics);
        // The workload itself fails unless the rewritten object is exactly the
        // subject's rows shorter; here, that the row reports what the table shows.
        assert_eq!(metrics["subject_rows_seeded"], 10, "{metrics}");
        assert_eq!(metrics["erased"]["import_rows"], 10, "{metrics}");
        assert_eq!(metrics["erased"]["import_objects"], 1, "{metrics}");
        assert_eq!(metrics["erased"]["import_versions_deleted"], 1, "{metrics}");
        assert!(number(&metrics, "file_bytes") >= 1_000_000.0, "{metrics}");
        assert!(number(&metrics, "mb_per_s") > 0.0, "{metrics}");
        assert!(
            number(&metrics, "erasure_peak_rss_bytes") > 0.0,
            "{metrics}"
        );
        assert!(number(&metrics, "setup_peak_rss_bytes") > 0.0, "{metrics}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn export_moves_messages_under_the_simulated_rate_limit() {
        let metrics = tokio::task::spawn_blocking(|| run(Workload::Export, 200))
            .await
            .unwrap();
        common(&metrics);
        assert_eq!(metrics["messages_seeded"], 200, "{metrics}");
        assert!(number(&metrics, "messages_exported") > 0.0, "{metrics}");
        assert!(number(&metrics, "bytes_written") > 0.0, "{metrics}");
        assert!(number(&metrics, "highlevel_requests") > 0.0, "{metrics}");
        // The limiter is real: the run never exceeds a window's allowance.
        assert!(
            number(&metrics, "peak_requests_in_window") <= 10.0,
            "{metrics}"
        );
        let share = number(&metrics, "share_of_rate_ceiling");
        assert!(share > 0.0 && share <= 1.0, "{metrics}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn export_conversations_exports_one_message_per_conversation() {
        let metrics = tokio::task::spawn_blocking(|| run(Workload::ExportConversations, 300))
            .await
            .unwrap();
        common(&metrics);
        assert_eq!(metrics["shape"], "conversations", "{metrics}");
        assert_eq!(metrics["conversations_seeded"], 300, "{metrics}");
        // A few seeded entries are activity no channel selects; every exported
        // conversation holds its one message.
        let exported = number(&metrics, "conversations");
        assert!(exported > 250.0 && exported <= 300.0, "{metrics}");
        assert_eq!(number(&metrics, "messages_exported"), exported, "{metrics}");
        assert_eq!(metrics["http_429"], 0, "{metrics}");
    }
}
