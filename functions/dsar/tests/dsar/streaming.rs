//! Erasure and access stream import objects: a file far larger than the chunk size,
//! with the subject's rows across chunk boundaries and inside quoted newlines, comes
//! back byte for byte minus those rows, written with a multipart upload that keeps
//! the original's tags and SSE-KMS; a failed rewrite aborts the upload and leaves the
//! original current.

use std::collections::HashSet;

use aws_sdk_s3::types::ServerSideEncryption;
use dsar::files::{self, MIN_PART_BYTES, Streaming, SubjectMatcher};

use crate::*;

const TINY: Streaming = Streaming {
    chunk_bytes: 7,
    part_bytes: MIN_PART_BYTES,
};

fn ann(deps: &Deps) -> HashSet<String> {
    ["email", "phone", "contact_id"]
        .iter()
        .map(|kind| ANN.pseudonym(deps, kind))
        .collect()
}

/// A CSV of `rows` rows with quoted newlines and commas; every 37th row is Ann's.
/// Returns the file and the file without Ann's rows.
fn csv_with_ann(rows: usize) -> (String, String) {
    let header = "name,email,note\r\n";
    let (mut all, mut kept) = (header.to_owned(), header.to_owned());
    for i in 0..rows {
        if i % 37 == 5 {
            all.push_str(&format!(
                "\"{}\nline two\",{},\"said \"\"hi\"\",\nthen left\"\r\n",
                ANN.name,
                ANN.email.to_uppercase()
            ));
        } else {
            let row = format!("\"Person {i}\nof \"\"here\"\"\",p{i}@example.com,\"a, b\"\r\n");
            all.push_str(&row);
            kept.push_str(&row);
        }
    }
    (all, kept)
}

async fn versions(deps: &Deps, key: &str) -> usize {
    bucket_versions(&deps.s3, &deps.config.imports_bucket)
        .await
        .iter()
        .filter(|(k, _, _)| k == key)
        .count()
}

#[tokio::test]
async fn erasure_streams_csv_and_jsonl_byte_for_byte_with_a_multipart_upload() {
    let Env { deps, .. } = env().await;
    let key = deps.pseudonym_key(&acme()).await.unwrap();
    let pseudonyms = ann(&deps);
    let matcher = SubjectMatcher {
        key: &key,
        pseudonyms: &pseudonyms,
        rules: Default::default(),
    };
    let (csv, csv_kept) = csv_with_ann(300);
    assert!(csv.len() > 1000 * TINY.chunk_bytes);
    let csv_key = put_import_object(&deps, IMPORT_CSV, "upload.csv", &csv, &[]).await;

    // Access reads Ann's rows through the same stream.
    let rows = files::subject_rows(&deps, &csv_key, &matcher, TINY)
        .await
        .unwrap();
    assert_eq!(rows.len(), 8);
    assert_eq!(rows[0]["name"], format!("{}\nline two", ANN.name));

    let outcome = files::erase_streaming(&deps, &csv_key, &matcher, false, TINY)
        .await
        .unwrap();
    assert_eq!(outcome.rows_removed, 8);
    assert!(outcome.rewritten);
    assert_eq!(outcome.parts, 1);
    assert_eq!(outcome.versions_deleted, 1);
    assert!(outcome.peak_buffered <= TINY.memory_bound());
    assert_eq!(current_object(&deps, &csv_key).await, csv_kept);
    assert_eq!(versions(&deps, &csv_key).await, 1);
    let head = deps
        .s3
        .head_object()
        .bucket(&deps.config.imports_bucket)
        .key(&csv_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    assert!(
        head.e_tag().is_some_and(|etag| etag.ends_with("-1\"")),
        "a multipart object: {:?}",
        head.e_tag()
    );
    let tags = deps
        .s3
        .get_object_tagging()
        .bucket(&deps.config.imports_bucket)
        .key(&csv_key)
        .send()
        .await
        .unwrap();
    // The original's retention tag (lifecycle expiry), and the rewrite's own mark,
    // which tells the import function this version is no second upload.
    let tags: Vec<(&str, &str)> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    assert_eq!(
        tags,
        vec![
            ("retention-class", "import-30d"),
            custody::imports::REWRITE_TAG
        ]
    );

    // A second run finds nothing and keeps the rewritten version.
    let again = files::erase_streaming(&deps, &csv_key, &matcher, false, TINY)
        .await
        .unwrap();
    assert_eq!((again.rows_removed, again.versions_deleted), (0, 0));
    assert_eq!(current_object(&deps, &csv_key).await, csv_kept);

    // JSON Lines over several 5 MiB parts: every other row is long filler, Ann's
    // rows (by phone, formatted as the import saw it) spread through the file.
    let (mut jsonl, mut jsonl_kept) = (String::new(), String::new());
    let filler = "x".repeat(2000);
    let mut i = 0;
    while jsonl.len() < 2 * MIN_PART_BYTES + MIN_PART_BYTES / 2 {
        i += 1;
        if i % 1000 == 0 {
            jsonl.push_str(&format!(
                "{}\n",
                json!({"phone": "+44 7700 900101", "i": i})
            ));
        } else {
            let line = format!(
                "{}\n",
                json!({"phone": format!("+4477008{i:05}"), "f": filler})
            );
            jsonl.push_str(&line);
            jsonl_kept.push_str(&line);
        }
    }
    let jsonl_key = put_import_object(&deps, IMPORT_JSONL, "upload.jsonl", &jsonl, &[]).await;
    let streaming = Streaming {
        chunk_bytes: 4096,
        part_bytes: MIN_PART_BYTES,
    };
    let outcome = files::erase_streaming(&deps, &jsonl_key, &matcher, false, streaming)
        .await
        .unwrap();
    assert_eq!(outcome.rows_removed, (i / 1000) as u64);
    assert_eq!(outcome.parts, 3);
    assert!(outcome.peak_buffered <= streaming.memory_bound());
    assert!(current_object(&deps, &jsonl_key).await == jsonl_kept);
    assert_eq!(versions(&deps, &jsonl_key).await, 1);
}

#[tokio::test]
async fn a_failed_rewrite_aborts_the_upload_and_leaves_the_original_current() {
    let Env { deps, .. } = env().await;
    let key = deps.pseudonym_key(&acme()).await.unwrap();
    let pseudonyms = ann(&deps);
    let matcher = SubjectMatcher {
        key: &key,
        pseudonyms: &pseudonyms,
        rules: Default::default(),
    };
    // Over one part of good rows (so a part is uploaded), Ann among them, then a
    // quote that never closes: the rewrite fails after the upload began.
    let (mut csv, _) = csv_with_ann(130_000);
    assert!(csv.len() > MIN_PART_BYTES);
    csv.push_str("\"never closed,x@example.com,y\r\n");
    let object = put_import_object(&deps, IMPORT_CSV, "upload.csv", &csv, &[]).await;
    let streaming = Streaming {
        chunk_bytes: 64 * 1024,
        part_bytes: MIN_PART_BYTES,
    };
    let err = files::erase_streaming(&deps, &object, &matcher, false, streaming)
        .await
        .unwrap_err();
    assert!(matches!(err, files::FileError::Parse(..)), "{err}");
    let uploads = deps
        .s3
        .list_multipart_uploads()
        .bucket(&deps.config.imports_bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    assert_eq!(versions(&deps, &object).await, 1);
    assert!(current_object(&deps, &object).await == csv);
}
