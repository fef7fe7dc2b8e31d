//! The egress guard at connect time, through the real shared HTTP client and a real
//! local server: names that resolve to internal addresses are refused, a name that
//! is rebound to an internal address between two requests is refused, and an IP
//! literal (which reqwest connects to without asking the resolver) is refused by the
//! peer check before the request is written. Loopback works only with the local
//! policy. No emulator needed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use custody::egress::{EgressPolicy, is_refusal};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A resolver that answers every name with the next of its scripted answers (the
/// last one repeats): a DNS server under an attacker's control.
struct Scripted {
    answers: Vec<Vec<SocketAddr>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(answers: Vec<Vec<&str>>) -> Arc<Self> {
        Arc::new(Self {
            answers: answers
                .into_iter()
                .map(|a| a.into_iter().map(|s| s.parse().unwrap()).collect())
                .collect(),
            calls: AtomicUsize::new(0),
        })
    }
}

impl Resolve for Scripted {
    fn resolve(&self, _name: Name) -> Resolving {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers[n.min(self.answers.len() - 1)].clone();
        Box::pin(async move {
            let addrs: Addrs = Box::new(answer.into_iter());
            Ok(addrs)
        })
    }
}

/// A plain HTTP server on loopback that answers 200 and counts the requests it read.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if let Ok(n) = socket.read(&mut buf).await
                    && n > 0
                {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    (addr, requests)
}

fn client(policy: EgressPolicy, resolver: Arc<dyn Resolve>) -> reqwest::Client {
    custody::http::client_with_resolver(policy, Duration::from_secs(5), resolver).unwrap()
}

#[tokio::test]
async fn names_resolving_to_internal_addresses_are_refused() {
    for internal in [
        "169.254.169.254:443",
        "10.0.0.1:443",
        "[::ffff:127.0.0.1]:443",
        "[fd00::1]:443",
        "100.64.0.1:443",
        "0.0.0.0:443",
        "[fd00:ec2::254]:443",
    ] {
        let resolver = Scripted::new(vec![vec![internal]]);
        let err = client(EgressPolicy::STRICT, resolver)
            .get("https://hooks.public-looking.example/in")
            .send()
            .await
            .expect_err(internal);
        assert!(is_refusal(&err), "{internal}: {err:?}");
    }
    // Even the local policy refuses everything internal but plain loopback.
    let resolver = Scripted::new(vec![vec!["169.254.169.254:80", "10.0.0.1:80"]]);
    let err = client(EgressPolicy::LOCAL, resolver)
        .get("http://metadata.example/latest")
        .send()
        .await
        .unwrap_err();
    assert!(is_refusal(&err), "{err:?}");
}

#[tokio::test]
async fn a_rebound_name_is_refused_at_connect_time() {
    let (addr, requests) = server().await;
    let public = "93.184.216.34:80".to_owned();
    let internal = format!("127.0.0.1:{}", addr.port());
    // First answer public (what a check at settings time would have seen), then the
    // attacker's DNS rebinds the name to the internal server.
    let resolver = Scripted::new(vec![vec![&public], vec![&internal]]);
    let first = resolver
        .resolve("rebind.example".parse().unwrap())
        .await
        .unwrap();
    assert!(
        first
            .into_iter()
            .all(|a| !custody::egress::is_forbidden(a.ip()))
    );
    let url = format!("http://rebind.example:{}/hook", addr.port());
    let err = client(EgressPolicy::STRICT, resolver)
        .post(&url)
        .body("secret batch")
        .send()
        .await
        .unwrap_err();
    assert!(is_refusal(&err), "{err:?}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
}

#[tokio::test]
async fn ip_literals_are_checked_by_the_peer_check() {
    let (addr, requests) = server().await;
    // The resolver would allow anything; reqwest does not even ask it for literals.
    let resolver = Scripted::new(vec![vec!["93.184.216.34:80"]]);
    let url = format!("http://127.0.0.1:{}/hook", addr.port());
    let err = client(EgressPolicy::STRICT, resolver.clone())
        .post(&url)
        .body("secret batch")
        .send()
        .await
        .unwrap_err();
    assert!(is_refusal(&err), "{err:?}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );

    // The local stack's policy reaches the same server.
    let response = client(EgressPolicy::LOCAL, resolver)
        .post(&url)
        .body("batch")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_webhook_delivery_fails_without_retrying() {
    let resolver = Scripted::new(vec![vec!["169.254.169.254:443"]]);
    let retry = custody::webhook::RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_secs(60),
        max_delay: Duration::from_secs(60),
    };
    let sender = custody::webhook::Sender::new(client(EgressPolicy::STRICT, resolver), retry);
    let url = custody::webhook::destination_url("https://hooks.public-looking.example/in", false)
        .unwrap();
    let secret = secrecy::SecretString::from("s".repeat(32));
    // A retry would sleep a minute; the refusal must come back at once.
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        sender.deliver(&url, &secret, "imp.0", bytes::Bytes::from_static(b"{}")),
    )
    .await
    .expect("refusal is not retried");
    assert!(
        matches!(result, Err(custody::webhook::WebhookError::InvalidUrl(_))),
        "{result:?}"
    );
}

#[test]
fn the_template_never_relaxes_the_guard() {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml")).unwrap();
    assert!(template.contains("CUSTODY_TABLE"), "read the real template");
    assert!(
        !template.contains(custody::egress::ALLOW_LOOPBACK_VAR),
        "no deployed function may allow loopback egress"
    );
}
