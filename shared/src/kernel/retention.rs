//! The one table of retention classes. Every `expires_at`, every S3 lifecycle rule
//! and every TTL setting follows from it; a test holds template.yaml to it.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The DynamoDB TTL attribute (epoch seconds) on the main table.
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// S3 object tag naming an object's retention class; lifecycle rules filter on it.
pub const S3_TAG_KEY: &str = "retention-class";

/// Days a noncurrent object version lives after it stops being current. Buckets are
/// versioned, so without this rule an "expired" object would linger as an old version.
pub const NONCURRENT_VERSION_DAYS: i32 = 1;

/// Days before an unfinished multipart upload (which holds data) is aborted.
pub const ABORT_INCOMPLETE_MULTIPART_DAYS: i32 = 1;

/// How long a class of data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Minutes(i64),
    Days(i64),
    /// Kept with no automatic expiry, for at least this many days (the audit log:
    /// no TTL, no delete permission).
    AtLeastDays(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetentionClass {
    /// Export-run log items: "logs of export operations … up to 90 days".
    ExportLog,
    /// Uploaded import data, default class: "deleted automatically after one month".
    #[serde(rename = "import-30d")]
    Import30d,
    /// Uploaded import data, the configurable longer class.
    #[serde(rename = "import-90d")]
    Import90d,
    /// Data-subject access bundles and account exports (the archive and its job item)
    /// in the dsar-results bucket.
    DsarResult,
    /// OAuth `state` + PKCE verifier between redirect and callback.
    OauthState,
    /// A HighLevel Marketplace install no tenant has claimed yet (sealed tokens, the
    /// claim token's hash) and the `INSTALL` webhook that corroborates it.
    PendingInstall,
    /// An import session (`<custody-importer>` embedded in another app): the token's
    /// hash, its tenant and its sealed destination, for the minutes it is valid.
    ImportSession,
    /// Idempotency records for at-least-once events.
    Idempotency,
    /// One-time verification codes for data-subject self-service.
    VerificationCode,
    /// Audit entries of export and import activity ("logs of export operations … up
    /// to 90 days"). Deleted by TTL a whole daily segment at a time.
    AuditActivity,
    /// Audit entries that are evidence: privacy requests, consent, deletions,
    /// connections, settings (CCPA §7101 keeps request records 24 months).
    AuditEvidence,
    /// Function logs (CloudWatch Logs): "technical logs are retained for 30 days".
    FunctionLog,
    /// Point-in-time recovery of both tables: "30-day rolling backup window". A
    /// deleted token or an erased subject is restorable for this long, no longer.
    Backup,
    /// An object version after it stops being current (an overwrite, a rewrite by
    /// erasure, a delete): buckets are versioned, so without this an expired or
    /// erased object would linger as an old version.
    NoncurrentVersion,
    /// A bypass-mode upload: deleted when processing ends; this is the backstop for
    /// an object whose processing never ended.
    Bypass,
    /// An event a function failed on after every retry (async invocation records,
    /// stream batch metadata, undeliverable schedules), in its failure queue until an
    /// operator redrives it. 14 days is the SQS maximum: the longest an operator has.
    FailedEvent,
}

impl RetentionClass {
    pub const ALL: [RetentionClass; 16] = [
        RetentionClass::ExportLog,
        RetentionClass::Import30d,
        RetentionClass::Import90d,
        RetentionClass::DsarResult,
        RetentionClass::OauthState,
        RetentionClass::PendingInstall,
        RetentionClass::ImportSession,
        RetentionClass::Idempotency,
        RetentionClass::VerificationCode,
        RetentionClass::AuditActivity,
        RetentionClass::AuditEvidence,
        RetentionClass::FunctionLog,
        RetentionClass::Backup,
        RetentionClass::NoncurrentVersion,
        RetentionClass::Bypass,
        RetentionClass::FailedEvent,
    ];

    pub fn period(self) -> Period {
        match self {
            RetentionClass::ExportLog => Period::Days(90),
            RetentionClass::Import30d => Period::Days(30),
            RetentionClass::Import90d => Period::Days(90),
            RetentionClass::DsarResult => Period::Days(7),
            RetentionClass::OauthState => Period::Minutes(10),
            RetentionClass::PendingInstall => Period::Minutes(15),
            RetentionClass::ImportSession => Period::Minutes(60),
            RetentionClass::Idempotency => Period::Days(1),
            RetentionClass::VerificationCode => Period::Minutes(15),
            // Two years is the floor the product promises; regulated tenants often
            // need six or seven, so the log is never deleted automatically.
            RetentionClass::AuditActivity => Period::Days(90),
            RetentionClass::AuditEvidence => Period::AtLeastDays(730),
            RetentionClass::FunctionLog => Period::Days(30),
            RetentionClass::Backup => Period::Days(30),
            RetentionClass::NoncurrentVersion => Period::Days(NONCURRENT_VERSION_DAYS as i64),
            RetentionClass::Bypass => Period::Days(1),
            RetentionClass::FailedEvent => Period::Days(14),
        }
    }

    /// The stable name, used as the S3 tag value and in logs.
    pub fn name(self) -> &'static str {
        match self {
            RetentionClass::ExportLog => "export-log",
            RetentionClass::Import30d => "import-30d",
            RetentionClass::Import90d => "import-90d",
            RetentionClass::DsarResult => "dsar-result",
            RetentionClass::OauthState => "oauth-state",
            RetentionClass::PendingInstall => "pending-install",
            RetentionClass::ImportSession => "import-session",
            RetentionClass::Idempotency => "idempotency",
            RetentionClass::VerificationCode => "verification-code",
            RetentionClass::AuditActivity => "audit-activity",
            RetentionClass::AuditEvidence => "audit-evidence",
            RetentionClass::FunctionLog => "function-log",
            RetentionClass::Backup => "backup",
            RetentionClass::NoncurrentVersion => "noncurrent-version",
            RetentionClass::Bypass => "bypass",
            RetentionClass::FailedEvent => "failed-event",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.name() == name)
    }

    /// Where the class lives and so which mechanism deletes it.
    pub fn store(self) -> Store {
        match self {
            RetentionClass::Import30d | RetentionClass::Import90d | RetentionClass::Bypass => {
                Store::ImportsBucket
            }
            RetentionClass::DsarResult => Store::DsarResultsBucket,
            RetentionClass::AuditActivity | RetentionClass::AuditEvidence => Store::AuditTable,
            RetentionClass::FunctionLog => Store::LogGroups,
            RetentionClass::NoncurrentVersion => Store::Buckets,
            RetentionClass::Backup => Store::PointInTimeRecovery,
            RetentionClass::FailedEvent => Store::FailureQueues,
            RetentionClass::ExportLog
            | RetentionClass::OauthState
            | RetentionClass::PendingInstall
            | RetentionClass::ImportSession
            | RetentionClass::Idempotency
            | RetentionClass::VerificationCode => Store::Table,
        }
    }

    /// The retention as a duration, or `None` when nothing expires automatically.
    pub fn duration(self) -> Option<Duration> {
        match self.period() {
            Period::Minutes(minutes) => Some(Duration::minutes(minutes)),
            Period::Days(days) => Some(Duration::days(days)),
            Period::AtLeastDays(_) => None,
        }
    }

    /// Whole days, for S3 lifecycle rules (which count in days).
    pub fn days(self) -> Option<i64> {
        match self.period() {
            Period::Days(days) => Some(days),
            Period::Minutes(_) | Period::AtLeastDays(_) => None,
        }
    }

    /// When an item of this class created at `now` expires, as the epoch seconds the
    /// TTL attribute holds.
    pub fn expires_at(self, now: DateTime<Utc>) -> Option<i64> {
        self.duration().map(|d| (now + d).timestamp())
    }

    /// What the product promises for the class, its mechanism and the test that
    /// proves it: `docs/RETENTION.md` and `GET /retention` are rendered from these.
    /// An exhaustive match, so a new class does not compile until it says all three.
    fn described(self) -> (&'static str, &'static str, &'static str) {
        match self {
            RetentionClass::ExportLog => (
                "export logs are kept up to 90 days",
                "`expires_at` on each export-run item; DynamoDB TTL deletes it and every read filters expired items",
                "`shared/tests/integration/store.rs`, `functions/export/tests/export/api.rs`",
            ),
            RetentionClass::Import30d => (
                "uploaded imports are deleted after a month",
                "object tag `retention-class=import-30d`; S3 lifecycle rule `retention-import-30d` (noncurrent versions too); the import's data marker expires by TTL; past the expiry, before the platform deletes, every reader goes by the number (`custody::imports`, on the injected clock): listings leave the import out, by id it is shown `expired`, a download or retry is refused (410), no link outlives it, and access bundles leave its rows out (erasure still reaches them)",
                "`template.rs::template_matches_retention`, `functions/import/tests/import/expired_reads.rs::listing_leaves_out_and_get_shows_expired_an_import_past_retention`, `functions/import/tests/import/expired_reads.rs::download_is_gone_past_retention_though_the_objects_remain`, `functions/dsar/tests/dsar/expired.rs::an_import_past_retention_is_left_out_of_the_bundle_and_still_erased`, `tests/tests/import_expiry_erasure.rs`",
            ),
            RetentionClass::Import90d => (
                "the longer import class a tenant may choose",
                "object tag `retention-class=import-90d`; S3 lifecycle rule `retention-import-90d`",
                "`template.rs::template_matches_retention`",
            ),
            RetentionClass::DsarResult => (
                "access bundles and account exports live only as long as their links need",
                "one lifecycle rule for the whole DSAR-results bucket (noncurrent versions too), which holds the account-export archives too; an account export's job item carries the same `expires_at` (TTL), so it never outlives its archive",
                "`template.rs::template_matches_retention`, `functions/dsar/tests/dsar/account_export.rs`",
            ),
            RetentionClass::OauthState => (
                "OAuth state and PKCE verifier only between redirect and callback",
                "`expires_at` (TTL) and the read filter; the callback consumes the state",
                "`functions/oauth/tests/oauth/flow.rs`",
            ),
            RetentionClass::PendingInstall => (
                "a Marketplace install's tokens are held for minutes until an admin claims it, then deleted",
                "`expires_at` (TTL) and the read filter; the claim consumes it; the oauth function's sweep (`custody::oauth::install::sweep_expired`, every 5 minutes) revokes an unclaimed grant where the provider can and deletes it",
                "`functions/oauth/tests/oauth/install.rs`",
            ),
            RetentionClass::ImportSession => (
                "an embedded importer's session token works for at most an hour (15 minutes unless its minter asks otherwise) and is deleted when revoked",
                "`expires_at` (TTL) and the read filter, set to the lifetime asked for; revoking deletes the record; only the token's SHA-256 is stored",
                "`functions/import/tests/import/session.rs`",
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
            RetentionClass::AuditActivity => (
                "export and import activity in the audit log is kept up to 90 days",
                "its own hash chain per tenant, cut into daily segments; every entry of a segment has the same `expires_at` (the segment's day + 90 days, so an entry lives 89 to 90 days) and DynamoDB TTL removes it; each closed segment is sealed by a checkpoint signed with the KMS signing key, and `verify` proves the chain from the oldest checkpoint still retained; no function has a delete grant",
                "`shared/tests/integration/audit.rs::expired_segments_go_and_the_rest_still_verifies`, `template.rs::functions_may_only_append_to_and_query_the_audit_table`",
            ),
            RetentionClass::AuditEvidence => (
                "every export, deletion and data access is logged immutably; privacy-request and deletion evidence at least 24 months",
                "its own hash chain per tenant, segments sealed by signed checkpoints like the activity chain, with no `expires_at`: never deleted automatically; deletion protection on the table, no function has a delete grant",
                "`shared/tests/integration/audit.rs::every_tampering_is_detected`, `template.rs::functions_may_only_append_to_and_query_the_audit_table`",
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
            RetentionClass::NoncurrentVersion => (
                "an overwritten, rewritten or deleted object does not linger as an old version",
                "`NoncurrentVersionExpiration` on every lifecycle rule of both buckets that expires data, and one untagged rule for the whole imports prefix; unfinished multipart uploads are aborted after the same day",
                "`template.rs::template_matches_retention`, `shared/tests/integration/provisioning.rs`",
            ),
            RetentionClass::Bypass => (
                "bypass mode pushes the rows and keeps nothing",
                "the upload is deleted (every version, its index entries and data marker) when processing ends, whether the rows were delivered, delivery failed or the file was invalid; a redelivered event purges again; failures are reported by line, rule and count only; row batches are pushed when posted and never stored; object tag `retention-class=bypass` (signed into the presigned PUT, set again when processed) with S3 lifecycle rule `retention-bypass` as the backstop for processing that never ends (noncurrent versions too)",
                "`functions/import/tests/import/bypass.rs::a_delivered_bypass_file_leaves_no_version_and_a_second_event_changes_nothing`, `functions/import/tests/import/bypass.rs::a_failed_bypass_delivery_keeps_nothing_and_reports_no_row_data`, `functions/import/tests/import/bypass.rs::an_invalid_bypass_file_keeps_nothing`, `functions/import/tests/import/rows.rs::bypass_rows_are_pushed_at_once_and_never_stored`, `template.rs::template_matches_retention`",
            ),
            RetentionClass::FailedEvent => (
                "nothing is lost silently: an event a function keeps failing on is kept for an operator to replay, then deleted",
                "one SSE-KMS (data key) SQS queue per function with `MessageRetentionPeriod`; Lambda's on-failure destinations (S3 and Scheduler invocations, stream batches) and the export schedules' dead-letter config send there; a message stays until it expires or an operator removes it",
                "`template.rs::every_asynchronous_source_has_a_failure_destination`, `template.rs::failure_queues_are_encrypted_and_keep_the_promised_days`, `infra/tests/failure_paths.rs`",
            ),
        }
    }

    pub fn promise(self) -> &'static str {
        self.described().0
    }

    pub fn mechanism(self) -> &'static str {
        self.described().1
    }

    /// The tests that prove the class is kept (paths relative to the repository).
    pub fn proof(self) -> &'static str {
        self.described().2
    }

    /// The import classes a tenant may choose between.
    pub fn import_classes() -> [RetentionClass; 2] {
        [RetentionClass::Import30d, RetentionClass::Import90d]
    }

    /// The import class used when an import names none.
    pub fn default_import_class() -> RetentionClass {
        RetentionClass::Import30d
    }
}

/// The store whose own mechanism enforces a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// DynamoDB TTL on `expires_at`, with reads filtering expired items.
    Table,
    /// The audit table: TTL on `expires_at` for the classes that expire, none for
    /// the others; checkpoints expire with their segment.
    AuditTable,
    /// One lifecycle rule per class, by object tag.
    ImportsBucket,
    /// One lifecycle rule for the whole bucket.
    DsarResultsBucket,
    /// Every bucket's `NoncurrentVersionExpiration`.
    Buckets,
    /// Each function's log group's `RetentionInDays`.
    LogGroups,
    /// Both tables' `PointInTimeRecoverySpecification.RecoveryPeriodInDays`.
    PointInTimeRecovery,
    /// Each failure queue's `MessageRetentionPeriod`.
    FailureQueues,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for class in RetentionClass::ALL {
            assert_eq!(RetentionClass::from_name(class.name()), Some(class));
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(json, format!("\"{}\"", class.name()));
        }
    }

    #[test]
    fn expiry_is_computed_from_the_period() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(
            RetentionClass::ExportLog.expires_at(now),
            Some(1_700_000_000 + 90 * 86_400)
        );
        assert_eq!(
            RetentionClass::OauthState.expires_at(now),
            Some(1_700_000_000 + 600)
        );
        assert_eq!(RetentionClass::AuditEvidence.expires_at(now), None);
    }

    #[test]
    fn promised_numbers() {
        assert_eq!(RetentionClass::ExportLog.days(), Some(90));
        assert_eq!(RetentionClass::Import30d.days(), Some(30));
        assert_eq!(RetentionClass::Import90d.days(), Some(90));
        assert_eq!(RetentionClass::DsarResult.days(), Some(7));
        assert_eq!(RetentionClass::FunctionLog.days(), Some(30));
        assert_eq!(RetentionClass::Backup.days(), Some(30));
        assert_eq!(RetentionClass::FailedEvent.days(), Some(14));
        assert_eq!(RetentionClass::AuditActivity.days(), Some(90));
        assert!(
            matches!(RetentionClass::AuditEvidence.period(), Period::AtLeastDays(d) if d >= 730)
        );
    }
}
