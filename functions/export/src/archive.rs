//! The export format: one JSON document per conversation and a manifest per run.
//! Field names are ours and stable (snake_case), times ISO-8601 UTC with milliseconds.
//! Built only in memory on their way to the destination.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use custody::highlevel::{Channel, Message};
use serde::Serialize;

use crate::model::{ExportRun, RunFile};

pub const CONVERSATION_FORMAT: &str = "custody.conversation/v1";
pub const MANIFEST_FORMAT: &str = "custody.manifest/v1";
pub const MANIFEST_NAME: &str = "manifest.json";

fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `<locationId>/<yyyy>/<mm>/<dd>/<run>` (the run's start date, UTC).
pub fn run_dir(location_id: &str, run: &ExportRun) -> String {
    format!(
        "{location_id}/{}/{}",
        run.started_at.format("%Y/%m/%d"),
        run.run_id
    )
}

/// A conversation file's path within the run directory.
pub fn conversation_path(conversation_id: &str) -> String {
    format!("conversations/{conversation_id}.json")
}

#[derive(Serialize)]
struct ConversationFile<'a> {
    format: &'static str,
    run_id: &'a str,
    exported_at: String,
    window: Window,
    conversation: ConversationMeta<'a>,
    messages: Vec<MessageOut<'a>>,
}

#[derive(Serialize)]
struct Window {
    start: Option<String>,
    end: String,
}

#[derive(Serialize)]
struct ConversationMeta<'a> {
    id: &'a str,
    location_id: &'a str,
    contact_id: &'a str,
    channels: BTreeSet<Channel>,
    first_message_at: Option<String>,
    last_message_at: Option<String>,
    message_count: usize,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    channel: Option<Channel>,
    message_type: &'a str,
    type_code: Option<i64>,
    direction: Option<&'a str>,
    status: Option<&'a str>,
    date_added: String,
    contact_id: &'a str,
    user_id: Option<&'a str>,
    source: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Option<&'a str>,
    attachments: &'a [String],
    meta: Option<&'a serde_json::Value>,
}

fn window(run: &ExportRun) -> Window {
    Window {
        start: run.window_start.map(iso),
        end: iso(run.window_end),
    }
}

/// The file of one conversation. `messages` must be sorted; the bytes depend only on
/// the run and the messages, so rewriting after a crash produces the same file.
pub fn conversation_file(
    run: &ExportRun,
    location_id: &str,
    conversation_id: &str,
    messages: &[Message],
) -> Result<Vec<u8>, serde_json::Error> {
    let file = ConversationFile {
        format: CONVERSATION_FORMAT,
        run_id: &run.run_id,
        exported_at: iso(run.started_at),
        window: window(run),
        conversation: ConversationMeta {
            id: conversation_id,
            location_id,
            contact_id: messages
                .first()
                .map(|m| m.contact_id.as_str())
                .unwrap_or(""),
            channels: messages.iter().filter_map(Message::channel).collect(),
            first_message_at: messages.first().map(|m| iso(m.date_added)),
            last_message_at: messages.last().map(|m| iso(m.date_added)),
            message_count: messages.len(),
        },
        messages: messages
            .iter()
            .map(|m| MessageOut {
                id: &m.id,
                channel: m.channel(),
                message_type: &m.message_type,
                type_code: m.type_code,
                direction: m.direction.as_deref(),
                status: m.status.as_deref(),
                date_added: iso(m.date_added),
                contact_id: &m.contact_id,
                user_id: m.user_id.as_deref(),
                source: m.source.as_deref(),
                content_type: m.content_type.as_deref(),
                body: m.body.as_deref(),
                attachments: &m.attachments,
                meta: m.meta.as_ref(),
            })
            .collect(),
    };
    serde_json::to_vec_pretty(&file)
}

#[derive(Serialize)]
struct Manifest<'a> {
    format: &'static str,
    run_id: &'a str,
    location_id: &'a str,
    started_at: String,
    window: Window,
    channels: &'a [Channel],
    totals: Totals,
    files: Vec<ManifestEntry<'a>>,
}

#[derive(Serialize)]
struct Totals {
    conversations: usize,
    messages: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    path: &'a str,
    conversation_id: &'a str,
    messages: u64,
    bytes: u64,
    sha256: &'a str,
}

/// The manifest: every file of the run with its message count and SHA-256.
pub fn manifest(
    run: &ExportRun,
    location_id: &str,
    files: &[RunFile],
) -> Result<Vec<u8>, serde_json::Error> {
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        run_id: &run.run_id,
        location_id,
        started_at: iso(run.started_at),
        window: window(run),
        channels: &run.channels,
        totals: Totals {
            conversations: files.len(),
            messages: files.iter().map(|f| f.messages).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
        },
        files: files
            .iter()
            .map(|f| ManifestEntry {
                path: &f.path,
                conversation_id: &f.conversation_id,
                messages: f.messages,
                bytes: f.bytes,
                sha256: &f.sha256,
            })
            .collect(),
    };
    serde_json::to_vec_pretty(&manifest)
}
