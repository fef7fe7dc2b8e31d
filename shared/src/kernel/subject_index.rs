//! Which records hold a data subject's data: one `SubjectRef` item per (subject,
//! record that mentions them), found through the `by_subject` GSI, so a data-subject
//! request costs in proportion to that subject's records, never a table scan.
//!
//! Writers (import processing, consent, privacy requests) add refs; the DSAR
//! function reads them to gather and erase; the expiry function removes the refs of
//! expired objects. A ref holds ids and counts only — never the identifier itself.

use serde::{Deserialize, Serialize};

use crate::kernel::store::{Entity, Key, keys};
use crate::kernel::tenant::TenantId;

/// Where the subject's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Rows of an imported file in the imports bucket (`object_key`).
    ImportObject,
    /// Consent records (`record_sk` in the tenant partition).
    Consent,
    /// A privacy request about the subject.
    PrivacyRequest,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ImportObject => "import_object",
            Source::Consent => "consent",
            Source::PrivacyRequest => "privacy_request",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRef {
    pub tenant: TenantId,
    /// `ps_…` pseudonym of the subject.
    pub pseudonym: String,
    pub source: Source,
    /// The id of the source record: the import id, the consent purpose, the request id.
    pub source_id: String,
    /// For `ImportObject`: the S3 key of the object that holds the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    /// How many rows/records of the source mention the subject.
    pub count: u64,
    /// Expires with the data it points to (epoch seconds), if that data expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl SubjectRef {
    /// The sort key within the tenant partition: `REF#<source>#<source_id>#<pseudonym>`,
    /// so all refs of one source can be listed (and deleted) by prefix.
    pub fn sort_key(source: Source, source_id: &str, pseudonym: &str) -> String {
        format!("{}{pseudonym}", Self::source_prefix(source, source_id))
    }

    /// The prefix of every ref of one source record.
    pub fn source_prefix(source: Source, source_id: &str) -> String {
        format!("REF#{}#{source_id}#", source.as_str())
    }
}

impl Entity for SubjectRef {
    const KIND: &'static str = "subject_ref";

    fn key(&self) -> Key {
        Key::new(
            keys::tenant(&self.tenant),
            Self::sort_key(self.source, &self.source_id, &self.pseudonym),
        )
    }

    fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }

    fn subject_index(&self) -> Option<(String, String)> {
        Some((
            keys::subject(&self.tenant, &self.pseudonym),
            format!("{}#{}", self.source.as_str(), self.source_id),
        ))
    }
}
