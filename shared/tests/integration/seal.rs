use custody::TenantId;
use custody::seal::{Purpose, SealContext, SealError, Sealed};
use custody::store::{Entity, Key};
use custody_local::harness::TestStack;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

const TOKEN: &str = "ghl-access-token-6f1d2c9e8b7a";

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

#[tokio::test]
async fn round_trip() {
    let stack = TestStack::new().await;
    let sealer = stack.sealer();
    let ctx = SealContext::new(&tenant("acme"), Purpose::OauthAccessToken, "CONN#highlevel");
    let sealed = sealer.seal(&ctx, &SecretString::from(TOKEN)).await.unwrap();
    let opened = sealer.open(&ctx, &sealed).await.unwrap();
    assert_eq!(opened.expose_secret(), TOKEN);
}

#[tokio::test]
async fn another_tenant_purpose_or_record_cannot_open() {
    let stack = TestStack::new().await;
    let sealer = stack.sealer();
    let ctx = SealContext::new(&tenant("acme"), Purpose::OauthAccessToken, "CONN#highlevel");
    let sealed = sealer.seal(&ctx, &SecretString::from(TOKEN)).await.unwrap();
    let others = [
        SealContext::new(
            &tenant("globex"),
            Purpose::OauthAccessToken,
            "CONN#highlevel",
        ),
        SealContext::new(
            &tenant("acme"),
            Purpose::OauthRefreshToken,
            "CONN#highlevel",
        ),
        SealContext::new(&tenant("acme"), Purpose::OauthAccessToken, "CONN#google"),
    ];
    for other in others {
        let err = sealer.open(&other, &sealed).await.unwrap_err();
        assert!(matches!(err, SealError::Rejected), "{other:?}: {err:?}");
    }
}

#[tokio::test]
async fn a_flipped_byte_fails() {
    let stack = TestStack::new().await;
    let sealer = stack.sealer();
    let ctx = SealContext::new(&tenant("acme"), Purpose::WebhookSecret, "DEST#1");
    let sealed = sealer.seal(&ctx, &SecretString::from(TOKEN)).await.unwrap();
    let bytes = sealed.as_bytes().to_vec();
    for position in [0, bytes.len() / 2, bytes.len() - 1] {
        let mut tampered = bytes.clone();
        tampered[position] ^= 0x01;
        let result = sealer.open(&ctx, &Sealed::from_bytes(tampered)).await;
        assert!(result.is_err(), "byte {position} flipped still opened");
    }
}

#[tokio::test]
async fn oversized_and_empty_secrets_are_refused_before_kms() {
    let stack = TestStack::new().await;
    let sealer = stack.sealer();
    let ctx = SealContext::new(&tenant("acme"), Purpose::WebhookSecret, "DEST#1");
    let big = SecretString::from("x".repeat(4097));
    assert!(matches!(
        sealer.seal(&ctx, &big).await,
        Err(SealError::TooLarge(4097))
    ));
    assert!(matches!(
        sealer.seal(&ctx, &SecretString::from("")).await,
        Err(SealError::Empty)
    ));
}

#[derive(Serialize, Deserialize)]
struct Connection {
    tenant: TenantId,
    access_token: Sealed,
}

impl Entity for Connection {
    const KIND: &'static str = "test-connection";
    fn key(&self) -> Key {
        Key::new(custody::store::keys::tenant(&self.tenant), "CONN#highlevel")
    }
}

#[tokio::test]
async fn stored_form_never_contains_the_plaintext() {
    let stack = TestStack::new().await;
    let sealer = stack.sealer();
    let store = stack.store(TestStack::system_clock());
    let acme = tenant("acme");
    let ctx = SealContext::new(&acme, Purpose::OauthAccessToken, "CONN#highlevel");
    let sealed = sealer.seal(&ctx, &SecretString::from(TOKEN)).await.unwrap();
    let connection = Connection {
        tenant: acme.clone(),
        access_token: sealed,
    };
    assert!(!format!("{:?}", connection.access_token).contains(TOKEN));
    store.put(&connection).await.unwrap();

    let dump = crate::raw_table_dump(&stack.clients.dynamodb, &stack.config.table).await;
    assert!(dump.contains("CONN#highlevel"), "the item is there");
    assert!(
        !dump.contains(TOKEN),
        "plaintext token in the table: {dump}"
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(TOKEN);
    assert!(
        !dump.contains(&b64[..20]),
        "base64 of the token in the table"
    );

    let back: Connection = store
        .get(&Key::new("T#acme", "CONN#highlevel"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sealer
            .open(&ctx, &back.access_token)
            .await
            .unwrap()
            .expose_secret(),
        TOKEN
    );
}
