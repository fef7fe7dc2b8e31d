//! The export's records in the single table. None holds message content: runs hold
//! counts, times, ids and error kinds; pages hold conversation ids; files hold paths,
//! counts and hashes. All of them expire with the run (90-day export log).

use chrono::{DateTime, Utc};
use custody::TenantId;
use custody::highlevel::Channel;
use custody::retention::RetentionClass;
use custody::store::{Entity, Key, keys};
use serde::{Deserialize, Serialize};

/// Most errors kept on one run record (the record must stay small).
pub const MAX_RUN_ERRORS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The tenant's schedule.
    Schedule,
    /// Run now, or a continuation after a deadline.
    Kick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Stopped near the Lambda deadline; a follow-up invocation continues it.
    Continued,
    /// Failed part-way; the next trigger resumes it from its checkpoint.
    Failed,
    Completed,
    /// Ended without exporting: no connection.
    NotConnected,
    /// Ended without exporting: the connection must be authorized again.
    NeedsReconsent,
    /// Ended without exporting: export settings were removed.
    NotConfigured,
}

impl RunStatus {
    /// Whether the run is over (it will not be resumed).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::NotConnected
                | RunStatus::NeedsReconsent
                | RunStatus::NotConfigured
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Paging the export endpoint to list the conversations touched in the window.
    Discover,
    /// Writing one file per conversation.
    Write,
    /// Writing the manifest.
    Manifest,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunErrorEntry {
    pub at: DateTime<Utc>,
    /// A stable kind (`highlevel`, `destination`, `connection`, …).
    pub kind: String,
    /// The error text of our own error types: statuses and kinds, never content.
    pub detail: String,
}

/// One export run: the export-log item and the run's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRun {
    pub tenant: TenantId,
    pub run_id: String,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The messages exported: `dateAdded` in `[window_start, window_end)`.
    #[serde(default)]
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: DateTime<Utc>,
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub location_id: Option<String>,

    // Checkpoint.
    pub phase: Phase,
    /// Index into the run's query plan (see `worker::plan`).
    pub plan_pos: u32,
    #[serde(default)]
    pub cursor: Option<String>,
    /// Pages of conversation ids discovered so far.
    pub pages: u32,
    /// Work-list pages whose conversations are all written as [`RunSeen`] items (the
    /// items follow their page's checkpoint; a resumed run writes the rest first).
    #[serde(default)]
    pub seen_pages: u32,
    pub write_page: u32,
    pub write_offset: u32,

    // Log.
    pub conversations: u64,
    pub messages: u64,
    pub bytes: u64,
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub invocations: u32,
    /// Conversations left out because their contact is under a restriction of
    /// processing (`custody::suppression::Scope::Restricted`). Counted with the write
    /// position, in the same checkpoint, so a resumed run counts each once.
    #[serde(default)]
    pub conversations_restricted: u64,
    /// Conversations left out because their contact withdrew consent for `export`
    /// (only with the settings' `exclude_withdrawn_consent`).
    #[serde(default)]
    pub conversations_consent_withdrawn: u64,
    /// Whether the `export.started` entry is known to be written (a failure right
    /// after creating the run leaves it false; the resume writes the entry if missing).
    #[serde(default)]
    pub started_audited: bool,
    #[serde(default)]
    pub errors: Vec<RunErrorEntry>,
    pub expires_at: i64,
}

impl ExportRun {
    pub fn new(
        tenant: &TenantId,
        run_id: String,
        trigger: Trigger,
        now: DateTime<Utc>,
        window_start: Option<DateTime<Utc>>,
        window_end: DateTime<Utc>,
        channels: Vec<Channel>,
    ) -> Self {
        Self {
            tenant: tenant.clone(),
            run_id,
            trigger,
            status: RunStatus::Running,
            started_at: now,
            finished_at: None,
            updated_at: now,
            window_start,
            window_end,
            channels,
            location_id: None,
            phase: Phase::Discover,
            plan_pos: 0,
            cursor: None,
            pages: 0,
            seen_pages: 0,
            write_page: 0,
            write_offset: 0,
            conversations: 0,
            messages: 0,
            bytes: 0,
            requests: 0,
            retries: 0,
            throttled: 0,
            invocations: 0,
            conversations_restricted: 0,
            conversations_consent_withdrawn: 0,
            started_audited: false,
            errors: Vec::new(),
            // The export log is kept 90 days from the run's start.
            expires_at: RetentionClass::ExportLog
                .expires_at(now)
                .unwrap_or_else(|| now.timestamp()),
        }
    }

    pub fn record_error(&mut self, at: DateTime<Utc>, kind: &str, detail: String) {
        if self.errors.len() >= MAX_RUN_ERRORS {
            self.errors.remove(0);
        }
        self.errors.push(RunErrorEntry {
            at,
            kind: kind.to_owned(),
            detail,
        });
    }
}

impl Entity for ExportRun {
    const KIND: &'static str = "export_run";

    fn key(&self) -> Key {
        Key::new(keys::tenant(&self.tenant), keys::export_run(&self.run_id))
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

/// The conversation ids first seen on one discovery page: the run's work list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPage {
    pub tenant: TenantId,
    pub run_id: String,
    pub page: u32,
    pub conversation_ids: Vec<String>,
    pub expires_at: i64,
}

impl Entity for RunPage {
    const KIND: &'static str = "export_run_page";

    fn key(&self) -> Key {
        Key::new(
            keys::tenant(&self.tenant),
            keys::export_run_page(&self.run_id, self.page),
        )
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

/// A conversation on a run's work list: one item per conversation, keyed by a digest
/// of its id, so the set of conversations discovery has seen lives in the table and
/// memory does not grow with the location. Written only once the work-list page that
/// lists the conversation is committed (`page` < the run's `pages`), so every item
/// stands for a conversation that is on the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSeen {
    pub tenant: TenantId,
    pub run_id: String,
    /// Hex of the first 128 bits of the SHA-256 of the conversation id.
    pub digest: String,
    /// The work-list page that lists the conversation.
    pub page: u32,
    pub expires_at: i64,
}

impl Entity for RunSeen {
    const KIND: &'static str = "export_run_seen";

    fn key(&self) -> Key {
        Key::new(
            keys::tenant(&self.tenant),
            keys::export_run_seen(&self.run_id, &self.digest),
        )
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

/// A file a run wrote and verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    pub tenant: TenantId,
    pub run_id: String,
    pub conversation_id: String,
    /// Relative to the run's directory.
    pub path: String,
    pub messages: u64,
    pub bytes: u64,
    pub sha256: String,
    pub expires_at: i64,
}

impl Entity for RunFile {
    const KIND: &'static str = "export_run_file";

    fn key(&self) -> Key {
        Key::new(
            keys::tenant(&self.tenant),
            keys::export_run_file(&self.run_id, &self.conversation_id),
        )
    }

    fn expires_at(&self) -> Option<i64> {
        Some(self.expires_at)
    }
}

/// Per tenant: the run lease (one invocation at a time), the run still to finish, and
/// where the last completed run's window ended (for "since last run").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportState {
    pub tenant: TenantId,
    #[serde(default)]
    pub active_run: Option<String>,
    #[serde(default)]
    pub lease_owner: Option<String>,
    /// Epoch ms; the lease is free after this.
    pub lease_until_ms: i64,
    #[serde(default)]
    pub last_window_end: Option<DateTime<Utc>>,
    /// The trigger (schedule fire time or kick id) whose invocation ended the last
    /// run. A redelivery of that trigger after its run ended is a duplicate, not a
    /// new run (its first delivery may have failed after the run ended).
    #[serde(default)]
    pub ended_by: Option<String>,
    /// Bumped by every write; writes are conditional on it.
    pub version: u64,
}

impl ExportState {
    pub fn empty(tenant: &TenantId) -> Self {
        Self {
            tenant: tenant.clone(),
            active_run: None,
            lease_owner: None,
            lease_until_ms: 0,
            last_window_end: None,
            ended_by: None,
            version: 0,
        }
    }

    pub fn key_of(tenant: &TenantId) -> Key {
        Key::new(keys::tenant(tenant), keys::export_state())
    }
}

impl Entity for ExportState {
    const KIND: &'static str = "export_state";

    fn key(&self) -> Key {
        Self::key_of(&self.tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs recorded before the suppression counters existed read them as 0.
    #[test]
    fn runs_stored_without_the_suppression_counters_read_as_zero() {
        let now = Utc::now();
        let tenant = TenantId::parse("acme").unwrap();
        let mut run = ExportRun::new(&tenant, "r1".into(), Trigger::Kick, now, None, now, vec![]);
        run.conversations_restricted = 3;
        let mut stored = serde_json::to_value(&run).unwrap();
        let fields = stored.as_object_mut().unwrap();
        fields.remove("conversations_restricted").unwrap();
        fields.remove("conversations_consent_withdrawn").unwrap();
        let read: ExportRun = serde_json::from_value(stored).unwrap();
        assert_eq!(
            (
                read.conversations_restricted,
                read.conversations_consent_withdrawn
            ),
            (0, 0)
        );
    }
}
