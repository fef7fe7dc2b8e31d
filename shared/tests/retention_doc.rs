//! `docs/RETENTION.md` is generated from the retention table (`custody::retention`):
//! each class, its promise, its number, the mechanism that keeps it and the test that
//! proves it. This test fails when the file is stale; regenerate it with
//! `CUSTODY_WRITE_DOCS=1 cargo test -p custody --test retention_doc`.

use custody::retention::{
    ABORT_INCOMPLETE_MULTIPART_DAYS, NONCURRENT_VERSION_DAYS, Period, RetentionClass,
};

/// Promise, mechanism, proof. An exhaustive match: a new class does not compile
/// until it says how it is kept and proven.
fn row(class: RetentionClass) -> (&'static str, &'static str, &'static str) {
    match class {
        RetentionClass::ExportLog => (
            "export logs are kept up to 90 days",
            "`expires_at` on each export-run item; DynamoDB TTL deletes it and every read filters expired items",
            "`shared/tests/integration/store.rs`, `functions/export/tests/export/api.rs`",
        ),
        RetentionClass::Import30d => (
            "uploaded imports are deleted after a month",
            "object tag `retention-class=import-30d`; S3 lifecycle rule `retention-import-30d` (noncurrent versions too); the import's data marker expires by TTL; past the expiry a download is refused (410) before the platform deletes, and no link outlives it",
            "`template.rs::template_matches_retention`, `functions/import/tests/import/expired_reads.rs`, `tests/tests/import_expiry_erasure.rs`",
        ),
        RetentionClass::Import90d => (
            "the longer import class a tenant may choose",
            "object tag `retention-class=import-90d`; S3 lifecycle rule `retention-import-90d`",
            "`template.rs::template_matches_retention`",
        ),
        RetentionClass::DsarResult => (
            "access bundles live only as long as their links need",
            "one lifecycle rule for the whole DSAR-results bucket (noncurrent versions too)",
            "`template.rs::template_matches_retention`",
        ),
        RetentionClass::OauthState => (
            "OAuth state and PKCE verifier only between redirect and callback",
            "`expires_at` (TTL) and the read filter; the callback consumes the state",
            "`functions/oauth/tests/oauth/flow.rs`",
        ),
        RetentionClass::Idempotency => (
            "idempotency records only as long as a retry can arrive",
            "`expires_at` (TTL) and the read filter",
            "`shared/tests/integration/idempotency.rs`",
        ),
        RetentionClass::VerificationCode => (
            "one-time verification codes for data-subject self-service",
            "`expires_at` (TTL) and the read filter",
            "`functions/dsar/tests/dsar/verification.rs`",
        ),
        RetentionClass::Audit => (
            "every export, deletion and data access is logged immutably, at least 24 months",
            "append-only audit table: no TTL, deletion protection, no function has a delete grant",
            "`template.rs::functions_may_only_append_to_and_query_the_audit_table`, `shared/tests/integration/audit.rs`",
        ),
        RetentionClass::FunctionLog => (
            "technical logs are retained for 30 days",
            "one CloudWatch log group per function with `RetentionInDays`, wired with `LoggingConfig`",
            "`template.rs::logs_and_backups_keep_the_promised_days`",
        ),
        RetentionClass::Backup => (
            "a 30-day rolling backup window",
            "`PointInTimeRecoverySpecification.RecoveryPeriodInDays` on both tables",
            "`template.rs::logs_and_backups_keep_the_promised_days`",
        ),
        RetentionClass::Bypass => (
            "bypass mode pushes the rows and keeps nothing",
            "object tag `retention-class=bypass`; S3 lifecycle rule `retention-bypass` as the backstop (noncurrent versions too)",
            "`template.rs::template_matches_retention`",
        ),
    }
}

fn number(period: Period) -> String {
    match period {
        Period::Minutes(m) => format!("{m} minutes"),
        Period::Days(d) => format!("{d} days"),
        Period::AtLeastDays(d) => format!("at least {d} days (never deleted automatically)"),
    }
}

fn render() -> String {
    let mut out = String::from(
        "# Retention\n\n\
         Generated from the retention table (`shared/src/kernel/retention.rs`) by\n\
         `shared/tests/retention_doc.rs`, which fails when this file is stale. Regenerate:\n\
         `CUSTODY_WRITE_DOCS=1 cargo test -p custody --test retention_doc`.\n\n\
         | class | promise | number | mechanism | proof |\n|---|---|---|---|---|\n",
    );
    for class in RetentionClass::ALL {
        let (promise, mechanism, proof) = row(class);
        out.push_str(&format!(
            "| `{}` | {promise} | {} | {mechanism} | {proof} |\n",
            class.name(),
            number(class.period())
        ));
    }
    out.push_str(&format!(
        "\nEvery bucket also expires noncurrent object versions after \
         {NONCURRENT_VERSION_DAYS} day(s) and aborts unfinished multipart uploads after \
         {ABORT_INCOMPLETE_MULTIPART_DAYS} day(s), so expired data does not linger as an \
         old version.\n\n\
         Not yet in this table (issue \"Retention everywhere\"): API access logs (none are \
         enabled) and retention classes per kind of audit entry; import listings and \
         access bundles still show an import past its expiry until the platform \
         deletes it (downloads are refused).\n"
    ));
    out
}

#[test]
fn retention_doc_is_generated_from_the_table() {
    let path = custody_local::repo_root().join("docs/RETENTION.md");
    let want = render();
    if std::env::var_os("CUSTODY_WRITE_DOCS").is_some() {
        std::fs::write(&path, &want).expect("write docs/RETENTION.md");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/RETENTION.md is stale: CUSTODY_WRITE_DOCS=1 cargo test -p custody --test retention_doc"
    );
}
