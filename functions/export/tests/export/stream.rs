//! Streamed writes (`Sink::put_stream`): the manifest goes to the destination a table
//! page at a time. S3 in parts against moto, WebDAV through the simulator's real
//! server (behind a proxy that cuts a `PUT` in the middle), and a whole run whose
//! manifest spans several table pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use custody::highlevel::Channel;
use custody::sink::{
    BodyError, BodySource, BodyStream, PARTIAL_SUFFIX, S3_PART_BYTES, S3Sink, Sink, SinkError,
    SinkRetry, WebDavSink, sha256_hex,
};
use custody_sim::highlevel::Seed;
use export::Budget;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::{DAV_USER, Env, all_time, dav_run_dir, fast_limits, tenant};

/// Deterministic manifest-like content of `len` bytes.
fn content(len: usize) -> Vec<u8> {
    let line =
        |i: usize| format!("    {{\"path\": \"conversations/c{i:08}.json\", \"n\": {i}}},\n");
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(line(i).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A body of `content` in chunks of `chunk` bytes, counting its openings; fails with
/// a source error after `fail_after` chunks when set.
struct Chunks {
    content: Bytes,
    chunk: usize,
    fail_after: Option<usize>,
    opened: Arc<AtomicU32>,
}

impl Chunks {
    fn new(content: Vec<u8>, chunk: usize) -> Self {
        Self {
            content: Bytes::from(content),
            chunk,
            fail_after: None,
            opened: Arc::default(),
        }
    }
}

impl BodySource for Chunks {
    fn open(&self) -> BodyStream {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let mut pieces: Vec<Result<Bytes, BodyError>> = (0..self.content.len())
            .step_by(self.chunk)
            .map(|at| {
                Ok(self
                    .content
                    .slice(at..(at + self.chunk).min(self.content.len())))
            })
            .collect();
        if let Some(after) = self.fail_after {
            pieces.truncate(after);
            pieces.push(Err(BodyError("the table read failed".into())));
        }
        Box::pin(futures::stream::iter(pieces))
    }
}

async fn bucket(env: &Env, name: &str) -> (S3Sink, String) {
    let bucket = format!("{name}-{}", env.stack.provisioned.stage);
    let s3 = &env.stack.clients.s3;
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    (S3Sink::new(s3.clone(), bucket.clone(), "exports"), bucket)
}

async fn read_back(env: &Env, bucket: &str, key: &str) -> (Vec<u8>, Option<String>) {
    let object = env
        .stack
        .clients
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let e_tag = object.e_tag.clone();
    let bytes = object.body.collect().await.unwrap().into_bytes().to_vec();
    (bytes, e_tag)
}

#[tokio::test]
async fn a_manifest_larger_than_one_s3_part_is_uploaded_in_parts_and_reads_back_identical() {
    let env = Env::new(fast_limits()).await;
    let (sink, bucket) = bucket(&env, "acme-stream").await;
    let s3 = &env.stack.clients.s3;

    // 2.4 parts, in chunks the size of a manifest's table page.
    let want = content(S3_PART_BYTES * 2 + S3_PART_BYTES / 2 + 17);
    let body = Chunks::new(want.clone(), 180_000);
    let receipt = sink.put_stream("run/manifest.json", &body).await.unwrap();
    assert_eq!(receipt.bytes, want.len() as u64);
    assert_eq!(receipt.sha256, sha256_hex(&want));
    assert_eq!(body.opened.load(Ordering::SeqCst), 1);
    let (got, e_tag) = read_back(&env, &bucket, "exports/run/manifest.json").await;
    assert!(got == want, "the object differs from the streamed body");
    // A multipart ETag ends in the part count.
    assert!(
        e_tag
            .as_deref()
            .is_some_and(|t| t.trim_matches('"').ends_with("-3")),
        "{e_tag:?}"
    );
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key("exports/run/manifest.json")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type.as_deref(), Some("application/json"));

    // Below one part: one PutObject, the same bytes.
    let small = content(300_000);
    let receipt = sink
        .put_stream("run/small.json", &Chunks::new(small.clone(), 70_000))
        .await
        .unwrap();
    assert_eq!(receipt.sha256, sha256_hex(&small));
    let (got, e_tag) = read_back(&env, &bucket, "exports/run/small.json").await;
    assert!(got == small);
    assert!(e_tag.is_some_and(|t| !t.contains('-')));

    // Our side failing after the first part: the upload is aborted, nothing visible.
    let mut failing = Chunks::new(content(S3_PART_BYTES * 2), 500_000);
    failing.fail_after = Some(15);
    let err = sink
        .put_stream("run/failed.json", &failing)
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Source(_)), "{err:?}");
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("exports/run/failed")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count, Some(0));
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads.unwrap_or_default().is_empty(),
        "upload not aborted"
    );
}

/// A TCP proxy to `upstream` that breaks the first connection carrying a `PUT` after
/// `cut_after` bytes of it, then forwards everything.
async fn cutting_proxy(
    upstream: std::net::SocketAddr,
    cut_after: usize,
) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let done = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let done = done.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                let mut put_bytes: Option<usize> = None;
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if put_bytes.is_none()
                        && !done.load(Ordering::SeqCst)
                        && buf[..n].windows(4).any(|w| w == b"PUT ")
                    {
                        put_bytes = Some(0);
                    }
                    if let Some(sent) = put_bytes.as_mut() {
                        *sent += n;
                        if *sent > cut_after && !done.swap(true, Ordering::SeqCst) {
                            // Mid-body: both directions torn down.
                            back.abort();
                            return;
                        }
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = back.await;
            });
        }
    });
    (format!("http://{addr}/dav"), cut)
}

#[tokio::test]
async fn a_webdav_write_broken_mid_stream_is_retried_and_leaves_one_complete_file() {
    let env = Env::new(fast_limits()).await;
    env.dav.collection("dav").await.unwrap();
    let upstream: std::net::SocketAddr = env
        .dav
        .url("dav")
        .trim_start_matches("http://")
        .trim_end_matches("/dav")
        .parse()
        .unwrap();
    let (url, cut) = cutting_proxy(upstream, 1_000_000).await;
    let http = custody::http::client_with_timeout(
        custody::egress::EgressPolicy::LOCAL,
        Duration::from_secs(10),
    )
    .unwrap();
    let retry = SinkRetry {
        max_attempts: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    };
    let sink = WebDavSink::new(
        http,
        &url,
        true,
        DAV_USER,
        env.dav_password.clone().into(),
        retry,
    )
    .unwrap();
    let before = env.dav.counters();

    let want = content(3 * 1024 * 1024 + 11);
    let body = Chunks::new(want.clone(), 64 * 1024);
    let receipt = sink.put_stream("run/manifest.json", &body).await.unwrap();
    assert!(cut.load(Ordering::SeqCst), "the proxy never cut a PUT");
    assert_eq!(
        body.opened.load(Ordering::SeqCst),
        2,
        "one retry, a fresh body"
    );
    assert_eq!(
        (receipt.bytes, receipt.sha256),
        (want.len() as u64, sha256_hex(&want))
    );
    let after = env.dav.counters();
    assert_eq!(after.moves - before.moves, 1, "moved into place once");
    let files = env.dav.files().await;
    assert!(
        files
            .get("/dav/run/manifest.json")
            .is_some_and(|got| *got == want),
        "the final file is the whole body"
    );
    let names: Vec<&String> = files.keys().filter(|p| p.starts_with("/dav/")).collect();
    assert_eq!(
        names,
        ["/dav/run/manifest.json"],
        "one file, no partial one"
    );

    // Our side failing mid-stream: no retry, and the file already at the path stays
    // as it was (nothing partial reaches it).
    let mut failing = Chunks::new(content(2 * 1024 * 1024), 64 * 1024);
    failing.fail_after = Some(10);
    let err = sink
        .put_stream("run/manifest.json", &failing)
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Source(_)), "{err:?}");
    assert_eq!(failing.opened.load(Ordering::SeqCst), 1);
    let files = env.dav.files().await;
    assert!(
        files
            .get("/dav/run/manifest.json")
            .is_some_and(|got| *got == want)
    );
    assert!(!files.keys().any(|p| p.starts_with("/dav/run/")
        && !p.ends_with(PARTIAL_SUFFIX)
        && p != "/dav/run/manifest.json"));
}

/// A run whose manifest spans several table pages (and so several streamed chunks):
/// its bytes are the whole-document encoding of the run's files, as before.
#[tokio::test]
async fn a_run_manifest_streamed_over_several_table_pages_is_byte_identical() {
    let env = Env::new(fast_limits()).await;
    let location = "locStream01";
    let acme = tenant("acme");
    env.connect(&acme, location, Some(&Seed::small(5150, 1_150, 1_150)))
        .await;
    let settings = env
        .webdav_settings("streamed", &Channel::ALL, all_time())
        .await;
    env.configure(&acme, settings).await;
    let (run_id, _) = env.run_to_completion(&acme, 1, Budget::unlimited).await;
    let run = env.run(&acme, &run_id).await;
    assert!(run.conversations > 1_000, "{}", run.conversations);
    let all = env.dav.files().await;
    let manifest = &all[&format!(
        "{}/{}",
        dav_run_dir("streamed", location, &run),
        export::archive::MANIFEST_NAME
    )];
    let files = crate::pipeline::stored_files(&env, &run).await;
    assert_eq!(files.len() as u64, run.conversations);
    assert!(
        *manifest == export::archive::manifest(&run, location, &files).unwrap(),
        "the streamed manifest differs from the whole document"
    );
    crate::Archive::verify(&all, &dav_run_dir("streamed", location, &run));
}
