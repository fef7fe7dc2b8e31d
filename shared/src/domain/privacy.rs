//! Privacy requests (data-subject access and erasure), their legal deadlines, the
//! status machine, consent records and one-time verification codes.
//!
//! # Deadlines
//!
//! All dates are calendar dates **in the tenant's time zone** (an IANA name from the
//! tenant's privacy settings; UTC when none is set): a request received at 23:30 on
//! 31 January in New York was received on 31 January there, even though it is already
//! 1 February in UTC. A deadline date ends at the last second of that date in the same
//! zone, stored as a UTC instant. Daylight-saving shifts are handled by the zone data.
//!
//! - **GDPR** (Art. 12(3)): one calendar month. The period starts the day after receipt
//!   and ends on the same day number one month later; when that month is shorter, on
//!   its last day (received 31 January → due 28/29 February; 5 May → 5 June). It may
//!   be extended once, by up to two further months, with reasons, before the first
//!   period ends. The extended due date is counted from receipt again (31 January + 3
//!   months = 30 April, not 28 February + 2 months), so clamping happens once.
//! - **CCPA** (Cal. Code Regs. tit. 11 §7021): respond within 45 calendar days,
//!   extendable once by up to 45 more with notice before the first period ends;
//!   acknowledge within 10 business days (Monday–Friday; public holidays are not
//!   modelled, which only makes the acknowledgement deadline later than a holiday-aware
//!   one by the holidays in between — see [`add_business_days`]).
//! - **The product's own commitments**: acknowledge within 48 hours of receipt; a first
//!   substantive response within 7 business days (the request verified and under way,
//!   decided, or extended with reasons — a request still waiting for the subject's
//!   verification code has had none); respond within 30 days (60 with notice). The
//!   effective dates are the earlier of the product's and the regulation's.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, Utc, Weekday};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::certificate::SignedCertificate;
use crate::kernel::http::{HttpAnswer, HttpError};
use crate::kernel::retention::RetentionClass;
use crate::kernel::seal::Sealed;
use crate::kernel::store::{Entity, Key, keys};
use crate::kernel::tenant::TenantId;

/// The product's acknowledgement commitment.
pub const PRODUCT_ACK_HOURS: i64 = 48;
/// The product's response commitment, and its extended form.
pub const PRODUCT_RESPONSE_DAYS: i64 = 30;
pub const PRODUCT_EXTENDED_RESPONSE_DAYS: i64 = 60;
pub const GDPR_RESPONSE_MONTHS: u32 = 1;
pub const GDPR_MAX_EXTENSION_MONTHS: u32 = 2;
pub const CCPA_RESPONSE_DAYS: i64 = 45;
pub const CCPA_MAX_EXTENSION_DAYS: i64 = 45;
pub const CCPA_ACK_BUSINESS_DAYS: u32 = 10;
/// The product's initial-response commitment, in business days of the tenant's zone.
pub const INITIAL_RESPONSE_BUSINESS_DAYS: u32 = 7;
/// Longest extension reason, note or consent field accepted.
pub const MAX_TEXT_LEN: usize = 1000;
/// Wrong verification codes allowed before the request is locked.
pub const MAX_VERIFICATION_ATTEMPTS: u32 = 3;
/// Length of a verification code (Crockford base32: 50 bits).
pub const VERIFICATION_CODE_LEN: usize = 10;
/// Consent changes kept per record (the newest; older ones are dropped).
pub const MAX_CONSENT_HISTORY: usize = 200;
/// Longest consent purpose (`[a-z0-9_-]`, so bytes are characters).
pub const MAX_PURPOSE_LEN: usize = 64;
/// Longest consent `source` and `policy_version`, in characters (not blank).
pub const MAX_CONSENT_TEXT_LEN: usize = 128;

const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    #[error("the request was already extended once")]
    AlreadyExtended,
    #[error("the due date has passed; an extension must be given before it")]
    PastDue,
    #[error("an extension needs a reason")]
    ReasonMissing,
    #[error("text is longer than {MAX_TEXT_LEN} characters")]
    TextTooLong,
    #[error("extension is longer than the regulation allows ({0})")]
    ExtensionTooLong(&'static str),
    #[error("extension must be at least one {0}")]
    ExtensionTooShort(&'static str),
    #[error("a request in status {from} cannot move to {to}")]
    InvalidTransition { from: Status, to: Status },
    #[error("consent purpose must be 1-{MAX_PURPOSE_LEN} characters of a-z, 0-9, '_' or '-'")]
    InvalidPurpose,
    #[error("the request is not open")]
    NotOpen,
}

impl HttpError for PrivacyError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            PrivacyError::ReasonMissing | PrivacyError::TextTooLong => {
                HttpAnswer::bad_request("reason", self.to_string())
            }
            PrivacyError::ExtensionTooLong(_) | PrivacyError::ExtensionTooShort(_) => {
                HttpAnswer::bad_request("months", self.to_string())
            }
            PrivacyError::InvalidPurpose => HttpAnswer::bad_request("purpose", self.to_string()),
            PrivacyError::AlreadyExtended
            | PrivacyError::PastDue
            | PrivacyError::InvalidTransition { .. }
            | PrivacyError::NotOpen => HttpAnswer::conflict(self.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------
// Regulations and deadlines
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regulation {
    Gdpr,
    Ccpa,
}

impl Regulation {
    pub fn as_str(self) -> &'static str {
        match self {
            Regulation::Gdpr => "gdpr",
            Regulation::Ccpa => "ccpa",
        }
    }
}

pub use crate::kernel::zone::{TenantZone, UnknownTimeZone};
// Requests and certificates both carry audit references; the type lives in the kernel.
pub use crate::kernel::audit::AuditRef;

/// `date` plus `months` calendar months, clamped to the end of a shorter month.
pub fn add_months_clamped(date: NaiveDate, months: u32) -> NaiveDate {
    // chrono's `checked_add_months` clamps to the last day of the target month; it
    // only fails beyond year 262 143.
    date.checked_add_months(Months::new(months))
        .unwrap_or(NaiveDate::MAX)
}

/// `date` plus `days` business days (Monday–Friday). Receipt on a weekend counts from
/// the next Monday. Public holidays are not modelled: they vary by state and year, and
/// ignoring them only ever moves this deadline earlier, never later.
pub fn add_business_days(date: NaiveDate, days: u32) -> NaiveDate {
    let mut current = date;
    let mut left = days;
    while left > 0 {
        current = current.succ_opt().unwrap_or(current);
        if !matches!(current.weekday(), Weekday::Sat | Weekday::Sun) {
            left -= 1;
        }
    }
    current
}

/// The dates a request must meet, all UTC instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    pub received_at: DateTime<Utc>,
    /// Acknowledge by: the earlier of the product's 48 hours and the regulation's.
    pub ack_due: DateTime<Utc>,
    /// The regulation's response deadline (extended if an extension was given).
    pub due_at: DateTime<Utc>,
    /// The product's own response commitment (30 days, 60 when extended).
    pub product_due_at: DateTime<Utc>,
    /// The product's initial-response commitment (7 business days). Absent on
    /// requests filed before it was tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_response_due: Option<DateTime<Utc>>,
}

impl Deadlines {
    /// Deadlines of a request received at `received_at` in zone `zone`.
    pub fn compute(regulation: Regulation, received_at: DateTime<Utc>, zone: &TenantZone) -> Self {
        let received = zone.date_of(received_at);
        // Checked throughout: `received_at` comes from a caller and may be any
        // representable instant; a deadline past the end of time saturates.
        let product_ack = received_at
            .checked_add_signed(Duration::hours(PRODUCT_ACK_HOURS))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let days_after = |days: i64| {
            received
                .checked_add_signed(Duration::days(days))
                .unwrap_or(NaiveDate::MAX)
        };
        let (ack_due, due_date) = match regulation {
            Regulation::Gdpr => (
                product_ack,
                add_months_clamped(received, GDPR_RESPONSE_MONTHS),
            ),
            Regulation::Ccpa => (
                product_ack.min(zone.end_of(add_business_days(received, CCPA_ACK_BUSINESS_DAYS))),
                days_after(CCPA_RESPONSE_DAYS),
            ),
        };
        Self {
            received_at,
            ack_due,
            due_at: zone.end_of(due_date),
            product_due_at: zone.end_of(days_after(PRODUCT_RESPONSE_DAYS)),
            initial_response_due: Some(
                zone.end_of(add_business_days(received, INITIAL_RESPONSE_BUSINESS_DAYS)),
            ),
        }
    }

    /// When to respond by: the earlier of the regulation's and the product's dates.
    pub fn respond_by(&self) -> DateTime<Utc> {
        self.due_at.min(self.product_due_at)
    }
}

/// How much longer a request may take: months for GDPR, days for CCPA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionLength {
    Months(u32),
    Days(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub length: ExtensionLength,
    pub reason: String,
    pub extended_at: DateTime<Utc>,
    pub extended_by: String,
    /// The regulation's due date before the extension.
    pub previous_due_at: DateTime<Utc>,
}

/// Checks an extension against the regulation's rules and returns the new deadlines.
/// Once only; with a reason; before the current due date; GDPR at most two months,
/// CCPA at most 45 days. The product's commitment moves to 60 days with it.
pub fn extend_deadlines(
    regulation: Regulation,
    current: &Deadlines,
    already_extended: bool,
    zone: &TenantZone,
    length: ExtensionLength,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Deadlines, PrivacyError> {
    if already_extended {
        return Err(PrivacyError::AlreadyExtended);
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(PrivacyError::ReasonMissing);
    }
    if reason.chars().count() > MAX_TEXT_LEN {
        return Err(PrivacyError::TextTooLong);
    }
    if now > current.due_at {
        return Err(PrivacyError::PastDue);
    }
    let received = zone.date_of(current.received_at);
    let due_date = match (regulation, length) {
        (Regulation::Gdpr, ExtensionLength::Months(months)) => {
            if months == 0 {
                return Err(PrivacyError::ExtensionTooShort("month"));
            }
            if months > GDPR_MAX_EXTENSION_MONTHS {
                return Err(PrivacyError::ExtensionTooLong("GDPR: two further months"));
            }
            add_months_clamped(received, GDPR_RESPONSE_MONTHS + months)
        }
        (Regulation::Ccpa, ExtensionLength::Days(days)) => {
            if days <= 0 {
                return Err(PrivacyError::ExtensionTooShort("day"));
            }
            if days > CCPA_MAX_EXTENSION_DAYS {
                return Err(PrivacyError::ExtensionTooLong("CCPA: 45 further days"));
            }
            received
                .checked_add_signed(Duration::days(CCPA_RESPONSE_DAYS.saturating_add(days)))
                .unwrap_or(NaiveDate::MAX)
        }
        (Regulation::Gdpr, ExtensionLength::Days(_)) => {
            return Err(PrivacyError::ExtensionTooLong("GDPR extends in months"));
        }
        (Regulation::Ccpa, ExtensionLength::Months(_)) => {
            return Err(PrivacyError::ExtensionTooLong("CCPA extends in days"));
        }
    };
    Ok(Deadlines {
        due_at: zone.end_of(due_date),
        product_due_at: zone.end_of(
            received
                .checked_add_signed(Duration::days(PRODUCT_EXTENDED_RESPONSE_DAYS))
                .unwrap_or(NaiveDate::MAX),
        ),
        ..*current
    })
}

/// Whole days from `now` until `deadline` (negative when overdue), counting a part day
/// as a day, so "0 days left" means "due within the next 24 hours or overdue today".
pub fn days_left(deadline: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let seconds = (deadline - now).num_seconds();
    if seconds >= 0 {
        seconds / 86_400
    } else {
        -((-seconds + 86_399) / 86_400)
    }
}

// ---------------------------------------------------------------------------------
// The request and its status machine
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Access / portability: a bundle of everything held about the subject.
    Access,
    /// Erasure: every record deleted or rewritten, then a certificate.
    Erasure,
    /// Restriction of processing or objection: the subject is left out of import
    /// pushes and exports (`custody::suppression`) from filing until lifted.
    Restrict,
    /// Rectification: the subject's identifier values corrected in every stored
    /// import file and in the subject index.
    Rectify,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Access => "access",
            RequestKind::Erasure => "erasure",
            RequestKind::Restrict => "restrict",
            RequestKind::Rectify => "rectify",
        }
    }
}

/// received → (identity_unverified) → pending → in_processing → complete | denied | error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Received,
    IdentityUnverified,
    Pending,
    InProcessing,
    Complete,
    Denied,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::IdentityUnverified => "identity_unverified",
            Status::Pending => "pending",
            Status::InProcessing => "in_processing",
            Status::Complete => "complete",
            Status::Denied => "denied",
            Status::Error => "error",
        }
    }

    /// Whether the request still needs an answer.
    pub fn is_open(self) -> bool {
        !matches!(self, Status::Complete | Status::Denied)
    }

    /// Whether processing may run (the subject's identity is established).
    pub fn is_runnable(self) -> bool {
        matches!(self, Status::Pending | Status::InProcessing)
    }

    /// The allowed transitions. `error` is retryable: it goes back to `in_processing`
    /// and continues from the last completed step.
    pub fn can_move_to(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Received, IdentityUnverified | Pending | Denied)
                | (IdentityUnverified, Pending | Denied)
                | (Pending, InProcessing | Denied)
                | (InProcessing, Complete | Error | Denied)
                | (Error, InProcessing | Pending)
        )
    }

    pub fn check_move(self, to: Status) -> Result<(), PrivacyError> {
        if self.can_move_to(to) {
            Ok(())
        } else {
            Err(PrivacyError::InvalidTransition { from: self, to })
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A completed processing step; recorded so a retry continues after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Access: the bundle is written to the results bucket.
    Bundle,
    /// Erasure: the plan (which records, which objects) is fixed.
    Plan,
    /// Erasure: imported files rewritten without the subject, old versions deleted.
    EraseFiles,
    /// Erasure: earlier access bundles deleted (every version).
    EraseResults,
    /// Erasure: consent, index entries and other items deleted; notes scrubbed.
    EraseItems,
    /// Erasure: the certificate is signed and stored.
    Certify,
    /// Rectification: the import objects holding the subject are fixed, and its
    /// consent records and suppression markers under the corrected pseudonyms.
    RectifyPlan,
    /// Rectification: those consent records and suppression markers moved to the
    /// corrected pseudonyms.
    RectifyItems,
    /// Rectification: the subject's rows rewritten with the corrected values, old
    /// versions deleted, index entries moved to the new pseudonyms.
    RectifyFiles,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Bundle => "bundle",
            Step::Plan => "plan",
            Step::EraseFiles => "erase_files",
            Step::EraseResults => "erase_results",
            Step::EraseItems => "erase_items",
            Step::Certify => "certify",
            Step::RectifyPlan => "rectify_plan",
            Step::RectifyItems => "rectify_items",
            Step::RectifyFiles => "rectify_files",
        }
    }

    /// The steps of a kind of request, in order.
    pub fn sequence(kind: RequestKind) -> &'static [Step] {
        match kind {
            RequestKind::Access => &[Step::Bundle],
            // In force from filing; nothing for the processor to do.
            RequestKind::Restrict => &[],
            RequestKind::Erasure => &[
                Step::Plan,
                Step::EraseFiles,
                Step::EraseResults,
                Step::EraseItems,
                Step::Certify,
            ],
            // Items before files: the subject's restriction and withdrawals are in
            // force under the corrected value before any file carries it.
            RequestKind::Rectify => &[Step::RectifyPlan, Step::RectifyItems, Step::RectifyFiles],
        }
    }
}

/// The access bundle of a completed access request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub key: String,
    pub sha256: String,
    pub bytes: u64,
    pub records: u64,
    pub created_at: DateTime<Utc>,
}

/// What an erasure will touch: ids and keys only, never personal data. Fixed before
/// anything is deleted, so a retry after the index entries are gone still knows the
/// files and items to finish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasurePlan {
    /// Imported objects holding the subject's rows.
    #[serde(default)]
    pub objects: Vec<String>,
    /// Items to delete (`pk`, `sk`): consent records, index entries, other records.
    #[serde(default)]
    pub items: Vec<(String, String)>,
    /// Earlier requests about the subject (their notes are scrubbed and their
    /// bundles deleted).
    #[serde(default)]
    pub earlier_requests: Vec<String>,
}

/// What an erasure removed, per store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureCounts {
    /// Rows removed from imported files.
    pub import_rows: u64,
    /// Imported files rewritten.
    pub import_objects: u64,
    /// Older object versions deleted from the imports bucket.
    pub import_versions_deleted: u64,
    /// Access-bundle object versions deleted from the results bucket.
    pub result_versions_deleted: u64,
    pub consent_records: u64,
    pub index_entries: u64,
    pub other_items: u64,
    /// Earlier requests whose free-text notes were removed.
    pub requests_scrubbed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyRequest {
    pub tenant: TenantId,
    /// ULID.
    pub id: String,
    /// Stored as `request_kind`: the `kind` attribute names the entity type.
    #[serde(rename = "request_kind")]
    pub kind: RequestKind,
    pub regulation: Regulation,
    pub status: Status,
    /// One pseudonym per identifier the request named (email, phone, contact id).
    /// The identifiers themselves are never stored.
    pub pseudonyms: Vec<String>,
    /// The subject is the tenant's account holder (connection data is theirs).
    #[serde(default)]
    pub account_holder: bool,
    /// Free text from the admin. Removed when the request completes an erasure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub time_zone: String,
    pub deadlines: Deadlines,
    pub acknowledged_at: DateTime<Utc>,
    /// Whether the acknowledgement met `ack_due`.
    pub acknowledged_in_time: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
    /// No fee: the first request of this subject within twelve months.
    pub free_of_charge: bool,
    /// `user:<sub>` of the admin who filed it.
    pub requested_by: String,
    #[serde(default)]
    pub steps_done: Vec<Step>,
    #[serde(default)]
    pub audit: Vec<AuditRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<ErasurePlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<ErasureCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<SignedCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial_reason: Option<String>,
    /// Failed processing attempts (the stream retries; after a limit → `error`).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// When the request first had a substantive response (verified and under way,
    /// decided, or extended): the 7-business-day commitment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_response_at: Option<DateTime<Utc>>,
    /// A `restrict` request's restriction: in force until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restriction: Option<Restriction>,
    /// A `rectify` request's corrections and what they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rectification: Option<Rectification>,
    /// Optimistic concurrency: every write is conditional on the version read.
    pub version: u64,
}

/// Why processing is restricted (GDPR Art. 18(1) a-d, or an objection, Art. 21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestrictionGround {
    /// The subject contests the data's accuracy, while it is checked.
    AccuracyContested,
    /// Processing is unlawful and the subject asks for restriction over erasure.
    UnlawfulProcessing,
    /// The controller no longer needs the data but the subject needs it for a claim.
    LegalClaims,
    /// The subject objects (Art. 21), while the grounds are weighed.
    Objection,
}

impl RestrictionGround {
    /// The API's and the audit log's name (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccuracyContested => "accuracy_contested",
            Self::UnlawfulProcessing => "unlawful_processing",
            Self::LegalClaims => "legal_claims",
            Self::Objection => "objection",
        }
    }
}

/// A restriction of processing and its lifting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    pub ground: RestrictionGround,
    pub since: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lift_reason: Option<String>,
}

impl Restriction {
    pub fn in_force(&self) -> bool {
        self.lifted_at.is_none()
    }
}

/// One identifier's correction, by pseudonym: the subject's current value and the
/// corrected one. The values themselves are only in [`Rectification::sealed_values`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub kind: crate::domain::subject::IdentifierKind,
    pub from: String,
    pub to: String,
}

/// A rectification: the corrections, the corrected values sealed until the files
/// are rewritten, and what the rewrite changed (counts only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rectification {
    pub corrections: Vec<Correction>,
    /// The corrected values (`{"email": …}`, normalised), sealed with purpose
    /// `rectification_values` under the request's record. Plaintext personal data:
    /// removed once the files are rewritten, and when the request is denied or erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_values: Option<Sealed>,
    /// Import objects holding the subject, fixed before the first rewrite so a retry
    /// after the index moved still knows them.
    #[serde(default)]
    pub objects: Vec<String>,
    #[serde(default)]
    pub files_rewritten: u64,
    #[serde(default)]
    pub rows_rectified: u64,
    /// Older object versions deleted (they held the old values).
    #[serde(default)]
    pub versions_deleted: u64,
    /// Index entries moved from an old pseudonym to a corrected one.
    #[serde(default)]
    pub index_entries_moved: u64,
    /// The subject's consent records and suppression markers (`pk`, `sk`) under a
    /// corrected pseudonym, fixed before any is moved so a retry still knows them.
    #[serde(default)]
    pub items: Vec<(String, String)>,
    /// Consent records moved to a corrected pseudonym (merged into one it had).
    #[serde(default)]
    pub consent_records_moved: u64,
    /// Suppression markers (restriction, withdrawn consent) moved likewise.
    #[serde(default)]
    pub suppression_markers_moved: u64,
}

/// `pseudonyms` and every pseudonym they were corrected to by `corrections`
/// (transitively: a → b, then b → c): where markers once put under `pseudonyms` may
/// be now.
pub fn with_corrections<'a>(
    corrections: impl IntoIterator<Item = &'a Correction>,
    pseudonyms: &[String],
) -> std::collections::BTreeSet<String> {
    let moves: Vec<&Correction> = corrections.into_iter().collect();
    let mut all: std::collections::BTreeSet<String> = pseudonyms.iter().cloned().collect();
    // Each round adds a pseudonym or ends, so this stops (cycles included).
    loop {
        let before = all.len();
        for m in &moves {
            if all.contains(&m.from) {
                all.insert(m.to.clone());
            }
        }
        if all.len() == before {
            return all;
        }
    }
}

impl Entity for PrivacyRequest {
    const KIND: &'static str = "privacy_request";

    fn key(&self) -> Key {
        Key::new(keys::tenant(&self.tenant), keys::privacy_request(&self.id))
    }
}

impl PrivacyRequest {
    pub fn key_of(tenant: &TenantId, id: &str) -> Key {
        Key::new(keys::tenant(tenant), keys::privacy_request(id))
    }

    pub fn step_done(&self, step: Step) -> bool {
        self.steps_done.contains(&step)
    }

    /// Moves to `to` if the machine allows it.
    pub fn move_to(&mut self, to: Status, now: DateTime<Utc>) -> Result<(), PrivacyError> {
        self.status.check_move(to)?;
        self.status = to;
        self.updated_at = now;
        if !matches!(to, Status::Received | Status::IdentityUnverified) {
            self.initial_response_at.get_or_insert(now);
        }
        Ok(())
    }

    /// Whether the first substantive response came (or will come) after its due date.
    /// Requests filed before it was tracked have none.
    pub fn initial_response_overdue(&self, now: DateTime<Utc>) -> bool {
        match self.deadlines.initial_response_due {
            Some(due) => self.initial_response_at.unwrap_or(now) > due,
            None => false,
        }
    }

    /// Whether the request was (or will be) answered in time.
    pub fn overdue(&self, now: DateTime<Utc>) -> bool {
        let answered = self.completed_at.unwrap_or(now);
        answered > self.deadlines.respond_by()
    }
}

// ---------------------------------------------------------------------------------
// Verification codes
// ---------------------------------------------------------------------------------

/// The one-time code that proves the subject is who the request says. Only a salted
/// SHA-256 of it is stored; it lives [`RetentionClass::VerificationCode`] and allows
/// [`MAX_VERIFICATION_ATTEMPTS`] wrong guesses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationCode {
    pub tenant: TenantId,
    pub request_id: String,
    pub salt: String,
    pub code_hash: String,
    pub attempts: u32,
    pub expires_at: i64,
}

impl Entity for VerificationCode {
    const KIND: &'static str = "verification_code";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant, &self.request_id)
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

impl VerificationCode {
    pub fn key_of(tenant: &TenantId, request_id: &str) -> Key {
        Key::new(keys::tenant(tenant), format!("DSARCODE#{request_id}"))
    }

    /// A fresh code (returned once, to be delivered) and its stored form.
    pub fn issue(
        tenant: &TenantId,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> (secrecy::SecretString, Self) {
        let mut rng = rand::rng();
        let code: String = (0..VERIFICATION_CODE_LEN)
            .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
            .collect();
        let salt: [u8; 16] = rng.random();
        let salt = hex::encode(salt);
        let code_hash = hash_code(&salt, request_id, &code);
        let expires_at = RetentionClass::VerificationCode
            .expires_at(now)
            .unwrap_or_else(|| now.timestamp());
        (
            secrecy::SecretString::from(code),
            Self {
                tenant: tenant.clone(),
                request_id: request_id.to_owned(),
                salt,
                code_hash,
                attempts: 0,
                expires_at,
            },
        )
    }

    /// Whether `code` is this code (case and separators forgiven: people retype it).
    pub fn matches(&self, code: &str) -> bool {
        let normalised: String = code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let candidate = hash_code(&self.salt, &self.request_id, &normalised);
        // Hashes of secrets: compare without an early exit.
        candidate.len() == self.code_hash.len()
            && candidate
                .bytes()
                .zip(self.code_hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn hash_code(salt: &str, request_id: &str, code: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update([0]);
    hasher.update(request_id.as_bytes());
    hasher.update([0]);
    hasher.update(code.as_bytes());
    hex::encode(hasher.finalize())
}

// ---------------------------------------------------------------------------------
// Consent
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    Granted,
    Withdrawn,
}

/// One change of a subject's consent for a purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentChange {
    pub state: ConsentState,
    pub at: DateTime<Utc>,
    /// Where it was given or withdrawn: `web_form`, `email`, `api`, …
    pub source: String,
    pub policy_version: String,
    pub recorded_by: String,
}

/// A subject's consent for one purpose: the current state and its history, newest
/// last. Lives in the subject's partition and is indexed under the subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub tenant: TenantId,
    pub pseudonym: String,
    pub purpose: String,
    pub current: ConsentChange,
    pub history: Vec<ConsentChange>,
    pub version: u64,
}

impl Entity for ConsentRecord {
    const KIND: &'static str = "consent";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant, &self.pseudonym, &self.purpose)
    }

    fn subject_index(&self) -> Option<(String, String)> {
        Some((
            keys::subject(&self.tenant, &self.pseudonym),
            format!("consent#{}", self.purpose),
        ))
    }
}

impl ConsentRecord {
    pub fn key_of(tenant: &TenantId, pseudonym: &str, purpose: &str) -> Key {
        Key::new(keys::subject(tenant, pseudonym), keys::consent(purpose))
    }

    /// The record after `change`: a new record, or the old one with the change appended
    /// to its history (bounded to the newest [`MAX_CONSENT_HISTORY`]).
    pub fn apply(
        existing: Option<Self>,
        tenant: &TenantId,
        pseudonym: &str,
        purpose: &str,
        change: ConsentChange,
    ) -> Self {
        match existing {
            Some(mut record) => {
                record.history.push(change.clone());
                if record.history.len() > MAX_CONSENT_HISTORY {
                    let excess = record.history.len() - MAX_CONSENT_HISTORY;
                    record.history.drain(..excess);
                }
                record.current = change;
                record.version += 1;
                record
            }
            None => Self {
                tenant: tenant.clone(),
                pseudonym: pseudonym.to_owned(),
                purpose: purpose.to_owned(),
                current: change.clone(),
                history: vec![change],
                version: 1,
            },
        }
    }
}

/// A consent purpose: `[a-z0-9_-]{1,64}` (it becomes part of a key).
pub fn validate_purpose(purpose: &str) -> Result<(), PrivacyError> {
    let ok = !purpose.is_empty()
        && purpose.len() <= MAX_PURPOSE_LEN
        && purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PrivacyError::InvalidPurpose)
    }
}

// ---------------------------------------------------------------------------------
// Tenant privacy settings and account deletion
// ---------------------------------------------------------------------------------

/// Where verification codes go: the tenant's endpoint, which relays them to the
/// subject by its own channel (email, SMS). Calls are signed with the sealed secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacySettings {
    pub tenant: TenantId,
    /// IANA zone deadlines are computed in.
    pub time_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_webhook: Option<WebhookTarget>,
    /// The processing purposes the tenant declares (consent is recorded per purpose;
    /// an import names one of these and leaves out subjects who withdrew it).
    #[serde(default)]
    pub purposes: Vec<String>,
    pub updated_at: DateTime<Utc>,
}

impl Entity for PrivacySettings {
    const KIND: &'static str = "privacy_settings";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant)
    }
}

impl PrivacySettings {
    pub const RECORD: &'static str = "PRIVACY#settings";

    pub fn key_of(tenant: &TenantId) -> Key {
        Key::new(keys::tenant(tenant), Self::RECORD)
    }

    pub fn zone(&self) -> TenantZone {
        self.time_zone.parse().unwrap_or_default()
    }
}

/// Most purposes a tenant may declare.
pub const MAX_PURPOSES: usize = 32;

/// The purposes `tenant` declared (none when it has no settings).
pub async fn declared_purposes(
    store: &crate::kernel::store::Store,
    tenant: &TenantId,
) -> Result<Vec<String>, crate::kernel::store::StoreError> {
    Ok(store
        .get::<PrivacySettings>(&PrivacySettings::key_of(tenant))
        .await?
        .map(|s| s.purposes)
        .unwrap_or_default())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeStatus {
    /// Tokens deleted and schedule removed; the purge runs.
    Purging,
    /// Everything purged; the certificate is signed and about to be logged.
    Certified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeStep {
    Table,
    ImportsBucket,
    ResultsBucket,
}

/// Counts of what the purge removed, per store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeCounts {
    pub connections: u64,
    pub table_items: u64,
    pub import_object_versions: u64,
    pub result_object_versions: u64,
}

/// The tracked account-deletion job: one per tenant, in the tenant's partition, the
/// last of its items to go. Progress (the table scan's cursor, steps done, counts) is
/// saved after every page, so a new invocation continues where the last stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDeletion {
    pub tenant: TenantId,
    pub id: String,
    pub status: PurgeStatus,
    pub requested_at: DateTime<Utc>,
    pub requested_by: String,
    #[serde(default)]
    pub steps_done: Vec<PurgeStep>,
    /// Where the table purge continues (an opaque scan cursor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_cursor: Option<String>,
    /// Whether the final sweep (the same passes again, [`PURGE_GRACE`] after the
    /// fence went up, for writes that were under way when it did) has begun.
    #[serde(default)]
    pub final_sweep: bool,
    pub counts: PurgeCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<SignedCertificate>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

impl Entity for AccountDeletion {
    const KIND: &'static str = "account_deletion";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant)
    }
}

impl AccountDeletion {
    pub const RECORD: &'static str = "ACCOUNT#deletion";

    /// A new job, as `DELETE /account` records it (the fence goes up with it).
    pub fn new(tenant: &TenantId, requested_by: &str, now: DateTime<Utc>) -> Self {
        Self {
            tenant: tenant.clone(),
            id: ulid::Ulid::new().to_string(),
            status: PurgeStatus::Purging,
            requested_at: now,
            requested_by: requested_by.to_owned(),
            steps_done: Vec::new(),
            table_cursor: None,
            final_sweep: false,
            counts: PurgeCounts::default(),
            certificate: None,
            updated_at: now,
            version: 1,
        }
    }

    pub fn key_of(tenant: &TenantId) -> Key {
        Key::new(keys::tenant(tenant), Self::RECORD)
    }
}

/// Why a writer refused a tenant.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// 409: the tenant's account deletion has started; nothing new is accepted.
    #[error("the account is being deleted; nothing new is accepted for it")]
    Closing,
    /// 500 (logged): the fence could not be read.
    #[error(transparent)]
    Store(#[from] crate::kernel::store::StoreError),
}

impl crate::kernel::http::HttpError for FenceError {
    fn answer(&self) -> crate::kernel::http::HttpAnswer<'_> {
        match self {
            FenceError::Closing => crate::kernel::http::HttpAnswer::conflict(self.to_string()),
            FenceError::Store(err) => err.answer(),
        }
    }
}

/// The account-deletion fence: from `DELETE /account` until its purge has ended, the
/// job item exists, and every writer (imports, export settings and runs, OAuth
/// connect and callback, consent, privacy requests) checks it first and refuses the
/// tenant. A writer that passed the check just before the fence went up is caught by
/// the purge's final sweep, which waits [`PURGE_GRACE`] past the fence.
pub async fn ensure_open(
    store: &crate::kernel::store::Store,
    tenant: &TenantId,
) -> Result<(), FenceError> {
    match store.get_item(&AccountDeletion::key_of(tenant)).await? {
        Some(_) => Err(FenceError::Closing),
        None => Ok(()),
    }
}

/// How long after the fence goes up the purge sweeps again: longer than any writer
/// takes between its fence check and its last write (an HTTP request is cut at 30 s;
/// the long-running writers, the export run and the import processing, check the fence
/// again at least every [`FENCE_RECHECK`] and write at most a batch or a file after).
pub const PURGE_GRACE: chrono::Duration = chrono::Duration::seconds(240);
/// How often a long-running writer checks the fence again.
pub const FENCE_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// The fence as a long-running writer watches it: read on the first call, then again
/// once [`FENCE_RECHECK`] has passed since the last read (cheap in between).
pub struct FenceWatch<'a> {
    store: &'a crate::kernel::store::Store,
    tenant: &'a TenantId,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl<'a> FenceWatch<'a> {
    pub fn new(store: &'a crate::kernel::store::Store, tenant: &'a TenantId) -> Self {
        Self {
            store,
            tenant,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Whether the account deletion has started (as of the last read).
    pub async fn closing(&self) -> Result<bool, crate::kernel::store::StoreError> {
        let due = {
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            last.is_none_or(|at| at.elapsed() >= FENCE_RECHECK)
        };
        if !due {
            return Ok(false);
        }
        let closing = match ensure_open(self.store, self.tenant).await {
            Ok(()) => false,
            Err(FenceError::Closing) => true,
            Err(FenceError::Store(err)) => return Err(err),
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        Ok(closing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_are_followed_transitively_and_cycles_end() {
        let c = |from: &str, to: &str| Correction {
            kind: crate::domain::subject::IdentifierKind::Email,
            from: from.into(),
            to: to.into(),
        };
        let moves = [c("b", "c"), c("a", "b"), c("x", "y"), c("c", "a")];
        let all = with_corrections(&moves, &["a".to_owned()]);
        assert_eq!(all.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(with_corrections(&moves, &["z".to_owned()]).len(), 1);
    }

    #[test]
    fn deadlines_near_the_ends_of_time_never_panic() {
        for zone in ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"] {
            let zone: TenantZone = zone.parse().unwrap();
            for at in [
                DateTime::<Utc>::MIN_UTC,
                DateTime::<Utc>::MIN_UTC + Duration::days(1),
                DateTime::<Utc>::MAX_UTC,
                DateTime::<Utc>::MAX_UTC - Duration::days(1),
            ] {
                for regulation in [Regulation::Gdpr, Regulation::Ccpa] {
                    let d = Deadlines::compute(regulation, at, &zone);
                    assert_eq!(d.received_at, at);
                    let _ = d.respond_by();
                    let length = match regulation {
                        Regulation::Gdpr => ExtensionLength::Months(2),
                        Regulation::Ccpa => ExtensionLength::Days(45),
                    };
                    // Refused or granted, never a panic.
                    let _ = extend_deadlines(regulation, &d, false, &zone, length, "volume", at);
                }
            }
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn zone(name: &str) -> TenantZone {
        name.parse().unwrap()
    }

    #[test]
    fn gdpr_due_dates() {
        // (received, zone, due: last second of that local date, as UTC)
        let cases = [
            // Month end: 31 January → last day of February.
            ("2025-01-31T10:00:00Z", "UTC", "2025-02-28T23:59:59Z"),
            // Leap year.
            ("2024-01-31T10:00:00Z", "UTC", "2024-02-29T23:59:59Z"),
            ("2024-01-29T10:00:00Z", "UTC", "2024-02-29T23:59:59Z"),
            ("2023-01-29T10:00:00Z", "UTC", "2023-02-28T23:59:59Z"),
            // Same day number next month.
            ("2025-05-05T08:00:00Z", "UTC", "2025-06-05T23:59:59Z"),
            ("2025-08-31T08:00:00Z", "UTC", "2025-09-30T23:59:59Z"),
            // Year boundary.
            ("2025-12-15T08:00:00Z", "UTC", "2026-01-15T23:59:59Z"),
            // Time zones: 23:30 on 31 January in New York is 1 February in UTC, but
            // the request was received on 31 January there.
            (
                "2025-02-01T04:30:00Z",
                "America/New_York",
                "2025-03-01T04:59:59Z",
            ),
            ("2025-02-01T04:30:00Z", "UTC", "2025-03-01T23:59:59Z"),
            // 00:30 on 1 March in Berlin is still 28 February in UTC.
            (
                "2025-02-28T23:30:00Z",
                "Europe/Berlin",
                "2025-04-01T21:59:59Z",
            ),
            // The due date falls after the spring DST change in Berlin (UTC+2).
            (
                "2025-03-10T12:00:00Z",
                "Europe/Berlin",
                "2025-04-10T21:59:59Z",
            ),
            // Far east: 10:00 UTC on 31 January is already 31 January 23:00 in Auckland.
            (
                "2025-01-31T10:00:00Z",
                "Pacific/Auckland",
                "2025-02-28T10:59:59Z",
            ),
        ];
        for (received, tz, due) in cases {
            let d = Deadlines::compute(Regulation::Gdpr, utc(received), &zone(tz));
            assert_eq!(d.due_at, utc(due), "received {received} in {tz}");
            assert_eq!(
                d.ack_due,
                utc(received) + Duration::hours(48),
                "ack {received}"
            );
        }
    }

    #[test]
    fn ccpa_due_and_ack_dates() {
        // (received, zone, due, ack due)
        let cases = [
            // Wednesday: 10 business days → Wednesday two weeks later (but the
            // product's 48 hours come first).
            (
                "2025-01-01T12:00:00Z",
                "UTC",
                "2025-02-15T23:59:59Z",
                "2025-01-03T12:00:00Z",
            ),
            // Leap year: 45 days from 15 February 2024 crosses 29 February.
            (
                "2024-02-15T12:00:00Z",
                "UTC",
                "2024-03-31T23:59:59Z",
                "2024-02-17T12:00:00Z",
            ),
            (
                "2023-02-15T12:00:00Z",
                "UTC",
                "2023-04-01T23:59:59Z",
                "2023-02-17T12:00:00Z",
            ),
            // Los Angeles: 20:00 on Friday 31 January local is Saturday in UTC.
            (
                "2025-02-01T04:00:00Z",
                "America/Los_Angeles",
                // 17 March is after the DST change: UTC-7.
                "2025-03-18T06:59:59Z",
                "2025-02-03T04:00:00Z",
            ),
        ];
        for (received, tz, due, ack) in cases {
            let d = Deadlines::compute(Regulation::Ccpa, utc(received), &zone(tz));
            assert_eq!(d.due_at, utc(due), "due {received} {tz}");
            assert_eq!(d.ack_due, utc(ack), "ack {received} {tz}");
        }
    }

    #[test]
    fn business_days_skip_weekends() {
        let date = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let cases = [
            // Friday + 1 → Monday.
            ("2025-01-03", 1, "2025-01-06"),
            // Friday + 10 → Friday two weeks later.
            ("2025-01-03", 10, "2025-01-17"),
            // Saturday + 1 → Monday; Sunday + 10 → Friday of the second week.
            ("2025-01-04", 1, "2025-01-06"),
            ("2025-01-05", 10, "2025-01-17"),
            // Wednesday + 10 → Wednesday two weeks later.
            ("2025-01-01", 10, "2025-01-15"),
            // Over a month end in a leap year.
            ("2024-02-23", 5, "2024-03-01"),
            ("2025-01-01", 0, "2025-01-01"),
        ];
        for (from, days, want) in cases {
            assert_eq!(
                add_business_days(date(from), days),
                date(want),
                "{from}+{days}"
            );
        }
    }

    #[test]
    fn product_ack_is_earlier_than_ccpa_ten_business_days() {
        // 10 business days always exceed 48 hours, so the product's commitment governs;
        // a request received late (ack already overdue) still gets the earlier date.
        let received = utc("2025-01-03T09:00:00Z");
        let d = Deadlines::compute(Regulation::Ccpa, received, &TenantZone::default());
        assert_eq!(d.ack_due, received + Duration::hours(48));
        assert!(
            d.ack_due < TenantZone::default().end_of(add_business_days(received.date_naive(), 10))
        );
    }

    #[test]
    fn product_commitment_is_thirty_days_and_respond_by_is_the_earlier() {
        let received = utc("2025-01-01T12:00:00Z");
        let d = Deadlines::compute(Regulation::Gdpr, received, &TenantZone::default());
        // GDPR: 1 February; product: 31 January.
        assert_eq!(d.due_at, utc("2025-02-01T23:59:59Z"));
        assert_eq!(d.product_due_at, utc("2025-01-31T23:59:59Z"));
        assert_eq!(d.respond_by(), d.product_due_at);
    }

    #[test]
    fn extension_rules() {
        let tz = TenantZone::default();
        let received = utc("2025-01-31T10:00:00Z");
        let now = utc("2025-02-10T10:00:00Z");
        let gdpr = Deadlines::compute(Regulation::Gdpr, received, &tz);
        // Two more months, counted from receipt: 30 April.
        let ext = extend_deadlines(
            Regulation::Gdpr,
            &gdpr,
            false,
            &tz,
            ExtensionLength::Months(2),
            "complex request",
            now,
        )
        .unwrap();
        assert_eq!(ext.due_at, utc("2025-04-30T23:59:59Z"));
        assert_eq!(ext.product_due_at, utc("2025-04-01T23:59:59Z"));
        let one = extend_deadlines(
            Regulation::Gdpr,
            &gdpr,
            false,
            &tz,
            ExtensionLength::Months(1),
            "r",
            now,
        )
        .unwrap();
        assert_eq!(one.due_at, utc("2025-03-31T23:59:59Z"));
        // Second extension refused.
        assert_eq!(
            extend_deadlines(
                Regulation::Gdpr,
                &ext,
                true,
                &tz,
                ExtensionLength::Months(1),
                "again",
                now
            ),
            Err(PrivacyError::AlreadyExtended)
        );
        // Reason required.
        assert_eq!(
            extend_deadlines(
                Regulation::Gdpr,
                &gdpr,
                false,
                &tz,
                ExtensionLength::Months(1),
                "  ",
                now
            ),
            Err(PrivacyError::ReasonMissing)
        );
        // Too long; wrong unit.
        assert!(matches!(
            extend_deadlines(
                Regulation::Gdpr,
                &gdpr,
                false,
                &tz,
                ExtensionLength::Months(3),
                "r",
                now
            ),
            Err(PrivacyError::ExtensionTooLong(_))
        ));
        assert!(matches!(
            extend_deadlines(
                Regulation::Gdpr,
                &gdpr,
                false,
                &tz,
                ExtensionLength::Days(10),
                "r",
                now
            ),
            Err(PrivacyError::ExtensionTooLong(_))
        ));
        // After the due date: refused. At the last second: allowed.
        assert_eq!(
            extend_deadlines(
                Regulation::Gdpr,
                &gdpr,
                false,
                &tz,
                ExtensionLength::Months(1),
                "r",
                utc("2025-03-01T00:00:00Z")
            ),
            Err(PrivacyError::PastDue)
        );
        assert!(
            extend_deadlines(
                Regulation::Gdpr,
                &gdpr,
                false,
                &tz,
                ExtensionLength::Months(1),
                "r",
                gdpr.due_at
            )
            .is_ok()
        );

        // CCPA: 45 + 45 days.
        let ccpa = Deadlines::compute(Regulation::Ccpa, utc("2025-01-01T12:00:00Z"), &tz);
        let ext = extend_deadlines(
            Regulation::Ccpa,
            &ccpa,
            false,
            &tz,
            ExtensionLength::Days(45),
            "volume",
            utc("2025-01-20T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(ext.due_at, utc("2025-04-01T23:59:59Z"));
        assert!(matches!(
            extend_deadlines(
                Regulation::Ccpa,
                &ccpa,
                false,
                &tz,
                ExtensionLength::Days(46),
                "r",
                now
            ),
            Err(PrivacyError::ExtensionTooLong(_))
        ));
        assert_eq!(
            extend_deadlines(
                Regulation::Ccpa,
                &ccpa,
                false,
                &tz,
                ExtensionLength::Days(0),
                "r",
                now
            ),
            Err(PrivacyError::ExtensionTooShort("day"))
        );
    }

    #[test]
    fn days_left_counts_part_days() {
        let now = utc("2025-01-01T00:00:00Z");
        assert_eq!(days_left(utc("2025-01-03T12:00:00Z"), now), 2);
        assert_eq!(days_left(utc("2025-01-01T12:00:00Z"), now), 0);
        assert_eq!(days_left(utc("2024-12-31T12:00:00Z"), now), -1);
    }

    #[test]
    fn status_machine() {
        use Status::*;
        assert!(Received.can_move_to(IdentityUnverified));
        assert!(IdentityUnverified.can_move_to(Pending));
        assert!(Pending.can_move_to(InProcessing));
        assert!(InProcessing.can_move_to(Complete));
        assert!(Error.can_move_to(InProcessing));
        assert!(!IdentityUnverified.can_move_to(InProcessing));
        assert!(!Complete.can_move_to(InProcessing));
        assert!(!Denied.can_move_to(Pending));
        assert!(!Received.can_move_to(Complete));
        assert!(!IdentityUnverified.is_runnable());
        assert!(Pending.is_runnable());
    }

    #[test]
    fn verification_codes_are_hashed_and_forgiving_about_case() {
        let tenant = TenantId::parse("acme").unwrap();
        let now = utc("2025-01-01T00:00:00Z");
        let (code, stored) = VerificationCode::issue(&tenant, "01REQ", now);
        use secrecy::ExposeSecret as _;
        let code = code.expose_secret().to_owned();
        assert_eq!(code.len(), VERIFICATION_CODE_LEN);
        assert!(!serde_json::to_string(&stored).unwrap().contains(&code));
        assert!(stored.matches(&code));
        assert!(stored.matches(&code.to_ascii_lowercase()));
        assert!(!stored.matches("0000000000"));
        assert_eq!(stored.expires_at, now.timestamp() + 15 * 60);
    }

    #[test]
    fn consent_history_is_kept_and_bounded() {
        let tenant = TenantId::parse("acme").unwrap();
        let change = |state| ConsentChange {
            state,
            at: utc("2025-01-01T00:00:00Z"),
            source: "web_form".into(),
            policy_version: "v1".into(),
            recorded_by: "user:a".into(),
        };
        let mut record = ConsentRecord::apply(
            None,
            &tenant,
            "ps_x",
            "marketing",
            change(ConsentState::Granted),
        );
        record = ConsentRecord::apply(
            Some(record),
            &tenant,
            "ps_x",
            "marketing",
            change(ConsentState::Withdrawn),
        );
        assert_eq!(record.current.state, ConsentState::Withdrawn);
        assert_eq!(record.history.len(), 2);
        assert_eq!(record.version, 2);
        for _ in 0..300 {
            record = ConsentRecord::apply(
                Some(record),
                &tenant,
                "ps_x",
                "marketing",
                change(ConsentState::Granted),
            );
        }
        assert_eq!(record.history.len(), MAX_CONSENT_HISTORY);
        assert!(validate_purpose("marketing_email").is_ok());
        assert!(validate_purpose("Marketing").is_err());
        assert!(validate_purpose("a#b").is_err());
        assert!(validate_purpose("").is_err());
    }

    #[test]
    fn every_privacy_error_has_its_http_answer() {
        use crate::kernel::http::table::{row, shown};

        for (err, field) in [
            (PrivacyError::ReasonMissing, "reason"),
            (PrivacyError::TextTooLong, "reason"),
            (PrivacyError::ExtensionTooLong("2 months"), "months"),
            (PrivacyError::ExtensionTooShort("month"), "months"),
            (PrivacyError::InvalidPurpose, "purpose"),
        ] {
            let want = shown(400, "invalid-request", Some(field));
            assert_eq!(row(&err), want, "{err}");
        }
        for err in [
            PrivacyError::AlreadyExtended,
            PrivacyError::PastDue,
            PrivacyError::InvalidTransition {
                from: Status::Complete,
                to: Status::Pending,
            },
            PrivacyError::NotOpen,
        ] {
            assert_eq!(row(&err), shown(409, "conflict", None), "{err}");
        }
    }

    #[test]
    fn restriction_grounds_are_named_as_serialised() {
        for ground in [
            RestrictionGround::AccuracyContested,
            RestrictionGround::UnlawfulProcessing,
            RestrictionGround::LegalClaims,
            RestrictionGround::Objection,
        ] {
            assert_eq!(serde_json::to_value(ground).unwrap(), ground.as_str());
        }
    }
}
