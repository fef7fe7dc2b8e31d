//! A hostile WebDAV server, real on loopback: it accepts the file and then answers
//! PROPFIND with a body that never ends. The sink must stop reading at its cap and
//! fail clearly, not fill memory or wait forever. No emulator needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use custody::egress::EgressPolicy;
use custody::sink::{MAX_PROPFIND_BYTES, Sink, SinkError, SinkRetry, WebDavSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one request (head and `content-length` body); returns its method.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    let head_end = loop {
        let n = socket.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        let n = socket.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
    }
    head.split_whitespace().next().map(str::to_owned)
}

async fn hostile_server() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let base = format!(
        "http://127.0.0.1:{}/dav/",
        listener.local_addr().unwrap().port()
    );
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Some(method) = read_request(&mut socket).await else {
                    return;
                };
                if method != "PROPFIND" {
                    let _ = socket
                        .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let head = b"HTTP/1.1 207 Multi-Status\r\ncontent-type: application/xml\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                if socket.write_all(head).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 16 * 1024];
                let framed = [
                    format!("{:x}\r\n", chunk.len()).into_bytes(),
                    chunk,
                    b"\r\n".to_vec(),
                ]
                .concat();
                // Endless: stops only when the client hangs up.
                while socket.write_all(&framed).await.is_ok() {
                    counter.fetch_add(framed.len() as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (base, sent)
}

#[tokio::test]
async fn an_endless_propfind_answer_is_cut_at_the_cap() {
    let (base, sent) = hostile_server().await;
    let http =
        custody::http::client_with_timeout(EgressPolicy::LOCAL, Duration::from_secs(30)).unwrap();
    let retry = SinkRetry {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
    };
    let sink = WebDavSink::new(
        http,
        &base,
        true,
        "user",
        secrecy::SecretString::from("password"),
        retry,
    )
    .unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        sink.put("exports/2026/file.json", bytes::Bytes::from_static(b"{}")),
    )
    .await
    .expect("the read stops at the cap instead of waiting for the end")
    .unwrap_err();
    assert!(matches!(err, SinkError::PropfindTooLarge), "{err:?}");
    assert!(err.to_string().contains(&MAX_PROPFIND_BYTES.to_string()));
    // Not retried (a hostile answer is final), and the server's endless body was
    // abandoned early (what it wrote is bounded by socket buffers, not the cap alone).
    assert!(
        sent.load(Ordering::SeqCst) < 64 * 1024 * 1024,
        "{}",
        sent.load(Ordering::SeqCst)
    );
}
