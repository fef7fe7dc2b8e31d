//! The export format: one JSON document per conversation and a manifest per run.
//! Field names are ours and stable (snake_case), times ISO-8601 UTC with milliseconds.
//! Built only in memory on their way to the destination; the manifest a piece at a
//! time ([`ManifestWriter::take`]), streamed.

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

/// The manifest's fields before its list of files.
#[derive(Serialize)]
struct ManifestHeader<'a> {
    format: &'static str,
    run_id: &'a str,
    location_id: &'a str,
    started_at: String,
    window: Window,
    channels: &'a [Channel],
    totals: &'a ManifestTotals,
}

/// The manifest's totals, summed over the run's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ManifestTotals {
    pub conversations: u64,
    pub messages: u64,
    pub bytes: u64,
}

impl ManifestTotals {
    pub fn add(&mut self, file: &RunFile) {
        self.conversations += 1;
        self.messages += file.messages;
        self.bytes += file.bytes;
    }
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    path: &'a str,
    conversation_id: &'a str,
    messages: u64,
    bytes: u64,
    sha256: &'a str,
}

/// The manifest (`custody.manifest/v1`): every file of the run with its message count
/// and SHA-256, encoded one entry at a time, so the run's files never need to be in
/// memory together (the worker pages them from the table). The bytes are exactly
/// `serde_json::to_vec_pretty` of the whole document: `format`, `run_id`,
/// `location_id`, `started_at`, `window`, `channels`, `totals`, `files`. The bytes
/// can be taken as they come ([`ManifestWriter::take`]), so the manifest streams to
/// the destination without ever being whole in memory.
pub struct ManifestWriter {
    out: Vec<u8>,
    entries: u64,
    /// Bytes already taken out of `out`.
    taken: usize,
}

impl ManifestWriter {
    /// Starts the manifest; `totals` must be the sums over the files that follow.
    pub fn new(
        run: &ExportRun,
        location_id: &str,
        totals: &ManifestTotals,
    ) -> Result<Self, serde_json::Error> {
        let header = ManifestHeader {
            format: MANIFEST_FORMAT,
            run_id: &run.run_id,
            location_id,
            started_at: iso(run.started_at),
            window: window(run),
            channels: &run.channels,
            totals,
        };
        let mut out = serde_json::to_vec_pretty(&header)?;
        // The object's closing "\n}" comes back in `finish`.
        out.truncate(out.len().saturating_sub(2));
        out.extend_from_slice(b",\n  \"files\": [");
        Ok(Self {
            out,
            entries: 0,
            taken: 0,
        })
    }

    pub fn entry(&mut self, file: &RunFile) -> Result<(), serde_json::Error> {
        let entry = serde_json::to_vec_pretty(&ManifestEntry {
            path: &file.path,
            conversation_id: &file.conversation_id,
            messages: file.messages,
            bytes: file.bytes,
            sha256: &file.sha256,
        })?;
        self.out
            .extend_from_slice(if self.entries == 0 { b"\n" } else { b",\n" });
        // Indented two levels (inside the object, inside the array); a pretty JSON
        // string holds no raw newline, so every newline is a line break.
        self.out.extend_from_slice(b"    ");
        for byte in entry {
            self.out.push(byte);
            if byte == b'\n' {
                self.out.extend_from_slice(b"    ");
            }
        }
        self.entries += 1;
        Ok(())
    }

    /// The bytes so far, taken or not (the manifest's size grows with its entries).
    pub fn len(&self) -> usize {
        self.taken + self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes encoded since the last `take`: the manifest is these, in order,
    /// followed by what [`ManifestWriter::finish`] returns.
    pub fn take(&mut self) -> Vec<u8> {
        let out = std::mem::take(&mut self.out);
        self.taken += out.len();
        out
    }

    /// The rest of the manifest (all of it when nothing was taken).
    pub fn finish(mut self) -> Vec<u8> {
        if self.entries == 0 {
            self.out.extend_from_slice(b"]\n}");
        } else {
            self.out.extend_from_slice(b"\n  ]\n}");
        }
        self.out
    }
}

/// The whole manifest of `files` at once (tests, small runs).
pub fn manifest(
    run: &ExportRun,
    location_id: &str,
    files: &[RunFile],
) -> Result<Vec<u8>, serde_json::Error> {
    let mut totals = ManifestTotals::default();
    files.iter().for_each(|f| totals.add(f));
    let mut writer = ManifestWriter::new(run, location_id, &totals)?;
    for file in files {
        writer.entry(file)?;
    }
    Ok(writer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody::TenantId;

    /// The manifest as one serde document, the way it was written before it was
    /// encoded entry by entry.
    fn whole(run: &ExportRun, location_id: &str, files: &[RunFile]) -> Vec<u8> {
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
        serde_json::to_vec_pretty(&Manifest {
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
        })
        .unwrap()
    }

    #[test]
    fn the_manifest_written_entry_by_entry_is_the_same_document() {
        let tenant = TenantId::parse("acme").unwrap();
        let now = chrono::Utc::now();
        let run = ExportRun::new(
            &tenant,
            "01RUN".into(),
            crate::model::Trigger::Kick,
            now,
            None,
            now,
            vec![Channel::Sms, Channel::Email],
        );
        let file = |i: u64| RunFile {
            tenant: tenant.clone(),
            run_id: run.run_id.clone(),
            conversation_id: format!("conv\"{i}\n"),
            path: conversation_path(&format!("conv{i}")),
            messages: i,
            bytes: 100 * i,
            sha256: format!("{i:064}"),
            expires_at: 0,
        };
        for n in [0, 1, 3] {
            let files: Vec<RunFile> = (1..=n).map(file).collect();
            let streamed = manifest(&run, "locA", &files).unwrap();
            assert_eq!(
                String::from_utf8(streamed.clone()).unwrap(),
                String::from_utf8(whole(&run, "locA", &files)).unwrap()
            );
            // Taken piece by piece, the same bytes.
            let mut totals = ManifestTotals::default();
            files.iter().for_each(|f| totals.add(f));
            let mut writer = ManifestWriter::new(&run, "locA", &totals).unwrap();
            let mut pieces = writer.take();
            for file in &files {
                writer.entry(file).unwrap();
                pieces.extend(writer.take());
            }
            assert_eq!(writer.len(), pieces.len());
            pieces.extend(writer.finish());
            assert_eq!(pieces, streamed);
            let parsed: serde_json::Value = serde_json::from_slice(&streamed).unwrap();
            assert_eq!(parsed["files"].as_array().unwrap().len(), n as usize);
            assert_eq!(parsed["totals"]["conversations"], n);
        }
    }
}
