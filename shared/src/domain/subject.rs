//! Data-subject identifiers and their pseudonyms.
//!
//! A data subject (the person a DSAR is about) is found by an [`Identifier`]: an email
//! address, a phone number or a CRM contact id. Identifiers are personal data, so they
//! are normalised once here and then only ever stored, indexed and audited as a
//! [`Pseudonym`]: `HMAC-SHA256(per-tenant key, kind || 0x00 || normalised value)`.
//!
//! # Normalisation
//!
//! The only purpose of normalisation is *matching*: the same person, written two ways
//! ("  Foo@Example.COM ", "foo@example.com"; "07700 900123", "+44 7700 900123"), must
//! produce the same pseudonym, or a DSAR would miss records.
//!
//! - **Email**: trimmed and lowercased as a whole. RFC 5321 allows a case-sensitive
//!   local part, but no mainstream mailbox provider treats it so and people type their
//!   address in whatever case they like; for a DSAR, missing the subject's records is
//!   the worse failure than merging two addresses that differ only in case. Nothing
//!   provider-specific is applied (no Gmail dot or `+tag` folding): that would merge
//!   genuinely different mailboxes at other providers. Quoted local parts containing
//!   `@` or spaces are not accepted.
//! - **Phone**: rewritten to E.164 (`+` and 8–15 digits). This is a *syntactic*
//!   normalisation: separators are removed, `00` becomes `+`, a national number gets the
//!   tenant's default country calling code and loses its trunk `0`. It does not check
//!   per-country numbering plans (that needs libphonenumber's metadata, a heavy
//!   dependency that changes several times a year). That is enough for matching: two
//!   spellings of one real number normalise to the same string, and a syntactically
//!   valid but unassigned number simply matches no records.
//! - **Contact id**: trimmed, case preserved (provider ids are case-sensitive),
//!   1–128 printable ASCII characters without whitespace.
//!
//! Errors name the problem but never echo the raw input: it is personal data and error
//! messages end up in logs and HTTP responses.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretBox, SecretSlice};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::kernel::tenant::TenantId;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Longest email address accepted, in bytes (RFC 5321 path limit minus the brackets).
pub const MAX_EMAIL_LEN: usize = 254;
/// Fewest digits (country code included) accepted in an E.164 number.
pub const MIN_PHONE_DIGITS: usize = 8;
/// Most digits (country code included) an E.164 number may have.
pub const MAX_PHONE_DIGITS: usize = 15;
/// Longest contact id accepted.
pub const MAX_CONTACT_ID_LEN: usize = 128;
/// Shortest application secret accepted for deriving pseudonym keys, in bytes.
pub const MIN_APP_SECRET_LEN: usize = 32;

/// Domain-separation label for per-tenant pseudonym keys. Changing it changes every
/// pseudonym, so it is versioned rather than edited.
const PSEUDONYM_KEY_LABEL: &[u8] = b"custody/pseudonym/v1/";
/// Prefix of every pseudonym's text form.
const PSEUDONYM_PREFIX: &str = "ps_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubjectError {
    #[error("email address is empty")]
    EmailEmpty,
    #[error("email address has no '@'")]
    EmailMissingAt,
    #[error("email address has more than one '@'")]
    EmailMultipleAt,
    #[error("email address has an empty local part")]
    EmailEmptyLocalPart,
    #[error("email address has an empty domain")]
    EmailEmptyDomain,
    #[error("email address contains whitespace or control characters")]
    EmailWhitespace,
    #[error("email address is longer than {MAX_EMAIL_LEN} bytes")]
    EmailTooLong,

    #[error("phone number is empty")]
    PhoneEmpty,
    #[error("phone number may contain only digits, a leading '+', spaces, '-', '.', '(' and ')'")]
    PhoneInvalidCharacter,
    #[error("phone number is national (no '+' or '00') and no default country code is set")]
    PhoneMissingCountryCode,
    #[error("default country calling code must be 1-3 digits not starting with 0")]
    PhoneInvalidDefaultCountryCode,
    #[error("phone number country code cannot start with 0")]
    PhoneInvalidCountryCode,
    #[error("phone number has fewer than {MIN_PHONE_DIGITS} digits")]
    PhoneTooShort,
    #[error("phone number has more than {MAX_PHONE_DIGITS} digits")]
    PhoneTooLong,

    #[error("contact id is empty")]
    ContactIdEmpty,
    #[error("contact id is longer than {MAX_CONTACT_ID_LEN} characters")]
    ContactIdTooLong,
    #[error("contact id may contain only printable ASCII characters without whitespace")]
    ContactIdInvalidCharacter,

    #[error("pseudonym must be 'ps_' followed by 64 lowercase hex digits")]
    InvalidPseudonym,

    /// Fetching the application secret failed. The text describes the failure
    /// (error code, transport problem), never the secret.
    #[error("could not read the application secret: {0}")]
    SecretFetch(String),
    #[error("the application secret has neither SecretString nor SecretBinary")]
    SecretMissing,
    #[error("the application secret is shorter than {MIN_APP_SECRET_LEN} bytes")]
    SecretTooShort,
}

/// What kind of identifier a value is. Part of the pseudonym input, so an email and a
/// contact id with the same text never share a pseudonym.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierKind {
    Email,
    Phone,
    ContactId,
}

impl IdentifierKind {
    /// The stable text form (the same as the serde form). Part of the pseudonym input:
    /// never change it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::ContactId => "contact_id",
        }
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A normalised data-subject identifier. Personal data: `Debug` redacts the value and
/// there is deliberately no `Display`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identifier {
    kind: IdentifierKind,
    value: String,
}

impl Identifier {
    /// Normalises `raw` as the given kind. `default_country_code` is only used for
    /// national phone numbers.
    pub fn new(
        kind: IdentifierKind,
        raw: &str,
        default_country_code: Option<&str>,
    ) -> Result<Self, SubjectError> {
        match kind {
            IdentifierKind::Email => Self::email(raw),
            IdentifierKind::Phone => Self::phone(raw, default_country_code),
            IdentifierKind::ContactId => Self::contact_id(raw),
        }
    }

    /// An email address, trimmed and lowercased (see the module docs for why).
    pub fn email(raw: &str) -> Result<Self, SubjectError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(SubjectError::EmailEmpty);
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SubjectError::EmailWhitespace);
        }
        let (local, domain) = trimmed
            .split_once('@')
            .ok_or(SubjectError::EmailMissingAt)?;
        if domain.contains('@') {
            return Err(SubjectError::EmailMultipleAt);
        }
        if local.is_empty() {
            return Err(SubjectError::EmailEmptyLocalPart);
        }
        if domain.is_empty() {
            return Err(SubjectError::EmailEmptyDomain);
        }
        let value = trimmed.to_lowercase();
        // Checked after lowercasing: a few non-ASCII characters change byte length.
        if value.len() > MAX_EMAIL_LEN {
            return Err(SubjectError::EmailTooLong);
        }
        Ok(Self {
            kind: IdentifierKind::Email,
            value,
        })
    }

    /// A phone number, rewritten to E.164 (`+` followed by 8–15 digits).
    ///
    /// `default_country_code` (1–3 digits, e.g. `"44"`) is required for national
    /// numbers, those written without `+` or the international prefix `00`.
    pub fn phone(raw: &str, default_country_code: Option<&str>) -> Result<Self, SubjectError> {
        let trimmed = raw.trim();
        // "+44 (0)7700 900123": the "(0)" marks the national trunk prefix, which is not
        // dialled from abroad. Drop it before the parentheses are stripped, or its zero
        // would become part of the number.
        let without_trunk_marker = trimmed.replacen("(0)", "", 1);
        let mut compact = String::with_capacity(without_trunk_marker.len());
        for c in without_trunk_marker.chars() {
            match c {
                '0'..='9' | '+' => compact.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                c if c.is_whitespace() => {}
                _ => return Err(SubjectError::PhoneInvalidCharacter),
            }
        }
        if compact.is_empty() {
            return Err(SubjectError::PhoneEmpty);
        }

        let digits: String = if let Some(rest) = compact.strip_prefix('+') {
            rest.to_owned()
        } else if let Some(rest) = compact.strip_prefix("00") {
            rest.to_owned()
        } else {
            let cc = default_country_code.ok_or(SubjectError::PhoneMissingCountryCode)?;
            let cc = cc.trim().trim_start_matches('+');
            if cc.is_empty()
                || cc.len() > 3
                || !cc.bytes().all(|b| b.is_ascii_digit())
                || cc.starts_with('0')
            {
                return Err(SubjectError::PhoneInvalidDefaultCountryCode);
            }
            // A national number carries a trunk prefix (in most of Europe, Asia and
            // Oceania a single leading 0) that is dialled only inside the country and is
            // not part of the E.164 number: UK 07700 900123 is +44 7700 900123. One
            // leading 0 is dropped, never more: "00" was already taken as the
            // international prefix above. In NANP countries (+1) numbers have no trunk
            // 0, so nothing is dropped there.
            let national = compact.strip_prefix('0').unwrap_or(&compact);
            format!("{cc}{national}")
        };

        // A '+' anywhere but the front (after separators were removed) is junk.
        if digits.is_empty() {
            return Err(SubjectError::PhoneEmpty);
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SubjectError::PhoneInvalidCharacter);
        }
        // Country calling codes never start with 0; "+0…" or "000…" is malformed.
        if digits.starts_with('0') {
            return Err(SubjectError::PhoneInvalidCountryCode);
        }
        if digits.len() < MIN_PHONE_DIGITS {
            return Err(SubjectError::PhoneTooShort);
        }
        if digits.len() > MAX_PHONE_DIGITS {
            return Err(SubjectError::PhoneTooLong);
        }
        Ok(Self {
            kind: IdentifierKind::Phone,
            value: format!("+{digits}"),
        })
    }

    /// A provider's contact id, trimmed, case preserved.
    pub fn contact_id(raw: &str) -> Result<Self, SubjectError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(SubjectError::ContactIdEmpty);
        }
        if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SubjectError::ContactIdInvalidCharacter);
        }
        // All ASCII now, so bytes == characters.
        if trimmed.len() > MAX_CONTACT_ID_LEN {
            return Err(SubjectError::ContactIdTooLong);
        }
        Ok(Self {
            kind: IdentifierKind::ContactId,
            value: trimmed.to_owned(),
        })
    }

    pub fn kind(&self) -> IdentifierKind {
        self.kind
    }

    /// The normalised value. Personal data: do not log it.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identifier({}, <redacted>)", self.kind)
    }
}

/// A subject's pseudonym within one tenant: `ps_` and 64 lowercase hex digits.
///
/// Not personal data on its own (it cannot be reversed without the tenant's key), so it
/// is what the subject index, the audit log and certificates carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pseudonym(String);

impl Pseudonym {
    /// Accepts the text form produced by [`PseudonymKey::pseudonym`] (e.g. read back
    /// from the store).
    pub fn parse(raw: &str) -> Result<Self, SubjectError> {
        let hex_part = raw
            .strip_prefix(PSEUDONYM_PREFIX)
            .ok_or(SubjectError::InvalidPseudonym)?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(SubjectError::InvalidPseudonym);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Pseudonym {
    type Error = SubjectError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Pseudonym> for String {
    fn from(value: Pseudonym) -> Self {
        value.0
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's pseudonym key: `HMAC-SHA256(app_secret, "custody/pseudonym/v1/" || tenant)`.
///
/// One application secret (in Secrets Manager) yields a different key per tenant, so the
/// same person has unrelated pseudonyms in two tenants and one tenant's data cannot be
/// joined with another's. Rotating the application secret changes every pseudonym:
/// it must not be rotated without re-indexing.
pub struct PseudonymKey(SecretBox<[u8; 32]>);

impl PseudonymKey {
    pub fn derive(app_secret: &SecretSlice<u8>, tenant: &TenantId) -> Self {
        let mut mac = new_hmac(app_secret.expose_secret());
        mac.update(PSEUDONYM_KEY_LABEL);
        mac.update(tenant.as_str().as_bytes());
        let mut out = mac.finalize().into_bytes();
        let key = SecretBox::<[u8; 32]>::init_with_mut(|k| k.copy_from_slice(&out));
        out.as_mut_slice().zeroize();
        Self(key)
    }

    /// The identifier's pseudonym under this tenant's key.
    pub fn pseudonym(&self, id: &Identifier) -> Pseudonym {
        let mut mac = new_hmac(self.0.expose_secret());
        mac.update(id.kind.as_str().as_bytes());
        // Separator: kinds are fixed ASCII words without NUL, so (kind, value) pairs
        // cannot be confused with one another.
        mac.update(&[0x00]);
        mac.update(id.value.as_bytes());
        let digest = mac.finalize().into_bytes();
        Pseudonym(format!("{PSEUDONYM_PREFIX}{}", hex::encode(digest)))
    }

    #[cfg(test)]
    fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

/// HMAC-SHA256 keyed with `key`; also used by `webhook` for delivery signatures.
pub(crate) fn new_hmac(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of any length (long keys are hashed, short ones padded),
    // so this cannot fail; it does not depend on input.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length")
}

/// The application secret pseudonym keys derive from (Secrets Manager,
/// `Config::pseudonym_secret_id`).
///
/// Read on first use per container and kept for the container's life: not at cold
/// start, because many invocations never need it (most HTTP routes, a run with nobody
/// to match), and a Secrets Manager round trip before the first poll lengthens every
/// cold start (docs/PERFORMANCE.md). A failed read is not kept: the next use tries
/// again.
#[derive(Clone)]
pub struct AppSecret {
    source: Option<(aws_sdk_secretsmanager::Client, String)>,
    cell: std::sync::Arc<tokio::sync::OnceCell<SecretSlice<u8>>>,
}

impl AppSecret {
    /// Read from `secret_id` on the first [`AppSecret::get`].
    pub fn lazy(client: aws_sdk_secretsmanager::Client, secret_id: &str) -> Self {
        Self {
            source: Some((client, secret_id.to_owned())),
            cell: std::sync::Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// A secret already in hand (tests, tools).
    pub fn loaded(secret: SecretSlice<u8>) -> Self {
        Self {
            source: None,
            cell: std::sync::Arc::new(tokio::sync::OnceCell::new_with(Some(secret))),
        }
    }

    /// The secret, read on the first call.
    pub async fn get(&self) -> Result<&SecretSlice<u8>, SubjectError> {
        match &self.source {
            Some((client, secret_id)) => {
                self.cell
                    .get_or_try_init(|| load_app_secret(client, secret_id))
                    .await
            }
            None => self.cell.get().ok_or(SubjectError::SecretMissing),
        }
    }

    /// The tenant's pseudonym key (reads the secret on first use).
    pub async fn pseudonym_key(&self, tenant: &TenantId) -> Result<PseudonymKey, SubjectError> {
        Ok(PseudonymKey::derive(self.get().await?, tenant))
    }

    /// The tenant's pseudonym key if the secret was read already (no I/O), for
    /// synchronous code that runs after a read.
    pub fn key_if_loaded(&self, tenant: &TenantId) -> Option<PseudonymKey> {
        self.cell
            .get()
            .map(|secret| PseudonymKey::derive(secret, tenant))
    }

    /// Whether the secret has been read in this container.
    pub fn is_loaded(&self) -> bool {
        self.cell.initialized()
    }
}

impl From<SecretSlice<u8>> for AppSecret {
    fn from(secret: SecretSlice<u8>) -> Self {
        Self::loaded(secret)
    }
}

impl fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSecret")
            .field("secret_id", &self.source.as_ref().map(|(_, id)| id))
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

/// Reads the application secret that pseudonym keys are derived from.
///
/// The secret's `SecretString` bytes (verbatim, not trimmed or decoded) or its
/// `SecretBinary` are the key material; it must be at least 32 bytes. Errors describe
/// the failure by error code or transport problem and never contain the secret.
pub async fn load_app_secret(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<SecretSlice<u8>, SubjectError> {
    let output = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|err| SubjectError::SecretFetch(describe_sdk_error(&err)))?;
    app_secret_from_output(output)
}

fn app_secret_from_output(
    mut output: aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput,
) -> Result<SecretSlice<u8>, SubjectError> {
    // Copy into an exactly-sized buffer (so boxing it does not reallocate and leave a
    // copy behind) and wipe the SDK's copy.
    let secret: SecretSlice<u8> = if let Some(mut s) = output.secret_string.take() {
        let copy = SecretSlice::from(s.as_bytes().to_vec());
        s.zeroize();
        copy
    } else if let Some(blob) = output.secret_binary.take() {
        let mut bytes = blob.into_inner();
        let copy = SecretSlice::from(bytes.as_slice().to_vec());
        bytes.zeroize();
        copy
    } else {
        return Err(SubjectError::SecretMissing);
    };
    if secret.expose_secret().len() < MIN_APP_SECRET_LEN {
        return Err(SubjectError::SecretTooShort);
    }
    Ok(secret)
}

/// Describes an SDK failure without anything from a response body: a response that
/// failed to parse may be a successful GetSecretValue response carrying the secret.
fn describe_sdk_error<E, R>(err: &aws_sdk_secretsmanager::error::SdkError<E, R>) -> String
where
    E: aws_sdk_secretsmanager::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    use aws_sdk_secretsmanager::error::{DisplayErrorContext, SdkError};
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            format!(
                "{}: {}",
                e.code().unwrap_or("unknown service error"),
                e.message().unwrap_or("no message")
            )
        }
        SdkError::ResponseError(_) => "the response could not be parsed".to_owned(),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            format!("{}", DisplayErrorContext(err))
        }
        SdkError::ConstructionFailure(_) => "the request could not be built".to_owned(),
        _ => "unknown SDK error".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn app_secret() -> SecretSlice<u8> {
        SecretSlice::from(b"0123456789abcdef0123456789abcdef-test-secret".to_vec())
    }

    fn key(t: &str) -> PseudonymKey {
        PseudonymKey::derive(&app_secret(), &tenant(t))
    }

    /// A Secrets Manager stand-in on loopback that answers every request with the
    /// test secret and counts the requests.
    async fn secrets_manager() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map(|v| v.trim().parse().unwrap())
                                .unwrap_or(0);
                            if seen.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = format!(
                        r#"{{"Name":"s","SecretString":"{}"}}"#,
                        String::from_utf8(app_secret().expose_secret().to_vec()).unwrap()
                    );
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                });
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn a_lazy_secret_is_read_on_first_use_and_once() {
        let (url, requests) = secrets_manager().await;
        let sdk = crate::aws::sdk_config_for_endpoint(&url, "us-east-1");
        let secret = AppSecret::lazy(aws_sdk_secretsmanager::Client::new(&sdk), "custody/app");
        assert!(!secret.is_loaded());
        assert!(secret.key_if_loaded(&tenant("acme")).is_none());
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0);
        let first = secret.pseudonym_key(&tenant("acme")).await.unwrap();
        let again = secret.clone().pseudonym_key(&tenant("acme")).await.unwrap();
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
        let id = Identifier::email("a@example.com").unwrap();
        assert_eq!(first.pseudonym(&id), key("acme").pseudonym(&id));
        assert_eq!(again.pseudonym(&id), key("acme").pseudonym(&id));
        assert!(secret.key_if_loaded(&tenant("acme")).is_some());
        assert!(!format!("{secret:?}").contains("0123456789"));
    }

    #[tokio::test]
    async fn a_failed_read_is_not_kept() {
        // Nothing listens there: the read fails, and the next use tries again.
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", unused.local_addr().unwrap());
        drop(unused);
        let sdk = crate::aws::sdk_config_for_endpoint(&url, "us-east-1");
        let secret = AppSecret::lazy(aws_sdk_secretsmanager::Client::new(&sdk), "custody/app");
        assert!(matches!(
            secret.get().await,
            Err(SubjectError::SecretFetch(_))
        ));
        assert!(!secret.is_loaded());
        let loaded = AppSecret::from(app_secret());
        assert!(loaded.is_loaded());
        assert!(loaded.get().await.is_ok());
    }

    #[test]
    fn email_normalisation_table() {
        let ok = [
            ("foo@example.com", "foo@example.com"),
            ("  Foo@Example.COM ", "foo@example.com"),
            (
                "\tUPPER.case+tag@Sub.Example.org\n",
                "upper.case+tag@sub.example.org",
            ),
            ("ÉLODIE@exemple.fr", "élodie@exemple.fr"),
        ];
        for (raw, want) in ok {
            let id = Identifier::email(raw).unwrap();
            assert_eq!(id.value(), want, "input {raw:?}");
            assert_eq!(id.kind(), IdentifierKind::Email);
        }
        let long_local = "a".repeat(250);
        let bad: [(&str, SubjectError); 8] = [
            ("", SubjectError::EmailEmpty),
            ("   ", SubjectError::EmailEmpty),
            ("foo.example.com", SubjectError::EmailMissingAt),
            ("foo@bar@example.com", SubjectError::EmailMultipleAt),
            ("@example.com", SubjectError::EmailEmptyLocalPart),
            ("foo@", SubjectError::EmailEmptyDomain),
            ("foo bar@example.com", SubjectError::EmailWhitespace),
            ("foo@exa\u{0}mple.com", SubjectError::EmailWhitespace),
        ];
        for (raw, want) in bad {
            assert_eq!(Identifier::email(raw), Err(want), "input {raw:?}");
        }
        assert_eq!(
            Identifier::email(&format!("{long_local}@ex.com")),
            Err(SubjectError::EmailTooLong)
        );
        // Exactly 254 bytes is fine.
        let exact = format!("{}@ex.com", "a".repeat(254 - 7));
        assert_eq!(exact.len(), 254);
        assert!(Identifier::email(&exact).is_ok());
    }

    #[test]
    fn phone_normalisation_table() {
        let ok: [(&str, Option<&str>, &str); 11] = [
            ("+44 7700 900123", None, "+447700900123"),
            ("0044 7700 900123", None, "+447700900123"),
            ("07700 900123", Some("44"), "+447700900123"),
            ("07700-900-123", Some("+44"), "+447700900123"),
            ("+44 (0)7700 900123", None, "+447700900123"),
            ("(415) 555-2671", Some("1"), "+14155552671"),
            ("+1.415.555.2671", None, "+14155552671"),
            ("  +49 30 123456  ", None, "+4930123456"),
            ("030 123456", Some("49"), "+4930123456"),
            ("+123456789012345", None, "+123456789012345"),
            // A national number with the default code is used even if a '+' one exists.
            ("7700900123", Some("44"), "+447700900123"),
        ];
        for (raw, cc, want) in ok {
            let id = Identifier::phone(raw, cc).unwrap();
            assert_eq!(id.value(), want, "input {raw:?} cc {cc:?}");
            assert_eq!(id.kind(), IdentifierKind::Phone);
        }
        let bad: [(&str, Option<&str>, SubjectError); 13] = [
            ("", None, SubjectError::PhoneEmpty),
            (" - ( ) ", None, SubjectError::PhoneEmpty),
            ("+", None, SubjectError::PhoneEmpty),
            ("07700 900123", None, SubjectError::PhoneMissingCountryCode),
            (
                "07700 900123",
                Some("4444"),
                SubjectError::PhoneInvalidDefaultCountryCode,
            ),
            (
                "07700 900123",
                Some("4a"),
                SubjectError::PhoneInvalidDefaultCountryCode,
            ),
            (
                "07700 900123",
                Some("04"),
                SubjectError::PhoneInvalidDefaultCountryCode,
            ),
            ("+44 7700 CALLME", None, SubjectError::PhoneInvalidCharacter),
            (
                "+44 7700 900123 ext 4",
                None,
                SubjectError::PhoneInvalidCharacter,
            ),
            ("+44+7700900123", None, SubjectError::PhoneInvalidCharacter),
            ("+1234567", None, SubjectError::PhoneTooShort),
            ("+1234567890123456", None, SubjectError::PhoneTooLong),
            (
                "+0447700900123",
                None,
                SubjectError::PhoneInvalidCountryCode,
            ),
        ];
        for (raw, cc, want) in bad {
            assert_eq!(
                Identifier::phone(raw, cc),
                Err(want),
                "input {raw:?} cc {cc:?}"
            );
        }
    }

    #[test]
    fn contact_id_table() {
        assert_eq!(
            Identifier::contact_id("  AbC123xYz ").unwrap().value(),
            "AbC123xYz"
        );
        assert_eq!(
            Identifier::contact_id(&"x".repeat(128))
                .unwrap()
                .value()
                .len(),
            128
        );
        assert_eq!(
            Identifier::contact_id(""),
            Err(SubjectError::ContactIdEmpty)
        );
        assert_eq!(
            Identifier::contact_id(&"x".repeat(129)),
            Err(SubjectError::ContactIdTooLong)
        );
        assert_eq!(
            Identifier::contact_id("ab cd"),
            Err(SubjectError::ContactIdInvalidCharacter)
        );
        assert_eq!(
            Identifier::contact_id("abcé"),
            Err(SubjectError::ContactIdInvalidCharacter)
        );
        assert_eq!(
            Identifier::contact_id("ab\u{7f}"),
            Err(SubjectError::ContactIdInvalidCharacter)
        );
    }

    #[test]
    fn identifier_new_dispatches_by_kind() {
        assert_eq!(
            Identifier::new(IdentifierKind::Phone, "07700 900123", Some("44")).unwrap(),
            Identifier::phone("+447700900123", None).unwrap()
        );
        assert_eq!(
            Identifier::new(IdentifierKind::Email, "A@B", None).unwrap(),
            Identifier::email("a@b").unwrap()
        );
    }

    #[test]
    fn kind_serde_is_snake_case() {
        assert_eq!(
            serde_json::to_string(&IdentifierKind::ContactId).unwrap(),
            "\"contact_id\""
        );
        let k: IdentifierKind = serde_json::from_str("\"phone\"").unwrap();
        assert_eq!(k, IdentifierKind::Phone);
    }

    #[test]
    fn errors_never_echo_the_input() {
        let secretish = "victim.person@private-domain.example";
        let inputs = [
            Identifier::email(&format!("{secretish} x")).unwrap_err(),
            Identifier::email(&format!("{secretish}@again")).unwrap_err(),
            Identifier::phone("+44 7700 PERSONAL", None).unwrap_err(),
            Identifier::contact_id("PERSONAL id").unwrap_err(),
        ];
        for err in inputs {
            let text = format!("{err} {err:?}");
            assert!(!text.contains("victim"), "{text}");
            assert!(!text.contains("PERSONAL"), "{text}");
        }
    }

    #[test]
    fn debug_redacts_identifier_and_key() {
        let id = Identifier::email("secret.person@example.com").unwrap();
        let dbg = format!("{id:?}");
        assert_eq!(dbg, "Identifier(email, <redacted>)");
        assert!(!dbg.contains("secret.person"));

        let k = key("acme");
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "PseudonymKey(<redacted>)");
        assert!(!dbg.contains(&hex::encode(k.expose())));
    }

    #[test]
    fn pseudonyms_are_stable_for_equal_normalised_input() {
        let k = key("acme");
        let a = k.pseudonym(&Identifier::email("  Foo@Example.COM ").unwrap());
        let b = k.pseudonym(&Identifier::email("foo@example.com").unwrap());
        assert_eq!(a, b);
        // And across two derivations of the same tenant key.
        assert_eq!(
            key("acme").pseudonym(&Identifier::email("foo@example.com").unwrap()),
            a
        );
        let p1 = k.pseudonym(&Identifier::phone("07700 900123", Some("44")).unwrap());
        let p2 = k.pseudonym(&Identifier::phone("+44 7700-900-123", None).unwrap());
        assert_eq!(p1, p2);
    }

    #[test]
    fn pseudonyms_differ_across_tenants_and_kinds() {
        let id = Identifier::email("foo@example.com").unwrap();
        assert_ne!(key("acme").pseudonym(&id), key("globex").pseudonym(&id));

        // The same text as a contact id and as an email must not collide.
        let k = key("acme");
        let as_contact = Identifier::contact_id("foo@example.com").unwrap();
        assert_eq!(as_contact.value(), id.value());
        assert_ne!(k.pseudonym(&as_contact), k.pseudonym(&id));
    }

    #[test]
    fn key_derivation_matches_the_documented_construction() {
        let secret = app_secret();
        let mut mac = HmacSha256::new_from_slice(secret.expose_secret()).unwrap();
        mac.update(b"custody/pseudonym/v1/acme");
        let want: [u8; 32] = mac.finalize().into_bytes().into();
        let k = PseudonymKey::derive(&secret, &tenant("acme"));
        assert_eq!(k.expose(), &want);

        let mut mac = HmacSha256::new_from_slice(&want).unwrap();
        mac.update(b"email\x00foo@example.com");
        let want_ps = format!("ps_{}", hex::encode(mac.finalize().into_bytes()));
        let got = k.pseudonym(&Identifier::email("foo@example.com").unwrap());
        assert_eq!(got.as_str(), want_ps);
        assert_eq!(got.to_string(), want_ps);
    }

    #[test]
    fn pseudonym_serde_is_a_plain_validated_string() {
        let p = key("acme").pseudonym(&Identifier::contact_id("c1").unwrap());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{}\"", p.as_str()));
        let back: Pseudonym = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<Pseudonym>("\"ps_abc\"").is_err());
        assert!(serde_json::from_str::<Pseudonym>(&format!("\"ps_{}\"", "A".repeat(64))).is_err());
        assert!(Pseudonym::parse(&format!("xx_{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn app_secret_from_string_or_binary() {
        use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
        use aws_smithy_types::Blob;

        let s = "s".repeat(32);
        let out = GetSecretValueOutput::builder().secret_string(&s).build();
        let got = app_secret_from_output(out).unwrap();
        assert_eq!(got.expose_secret(), s.as_bytes());

        let out = GetSecretValueOutput::builder()
            .secret_binary(Blob::new(vec![7u8; 40]))
            .build();
        assert_eq!(
            app_secret_from_output(out).unwrap().expose_secret(),
            &[7u8; 40]
        );

        let short = "too-short-secret";
        let out = GetSecretValueOutput::builder().secret_string(short).build();
        let err = app_secret_from_output(out).unwrap_err();
        assert_eq!(err, SubjectError::SecretTooShort);
        assert!(!format!("{err} {err:?}").contains(short));

        let out = GetSecretValueOutput::builder().build();
        assert_eq!(
            app_secret_from_output(out).unwrap_err(),
            SubjectError::SecretMissing
        );
    }

    proptest! {
        #[test]
        fn email_normalisation_is_idempotent(
            local in "[A-Za-z0-9._%+-]{1,40}",
            domain in "[A-Za-z0-9-]{1,30}\\.[A-Za-z]{2,10}",
            pad_l in "[ \t]{0,3}",
            pad_r in "[ \t\n]{0,3}",
        ) {
            let raw = format!("{pad_l}{local}@{domain}{pad_r}");
            let once = Identifier::email(&raw).unwrap();
            let twice = Identifier::email(once.value()).unwrap();
            prop_assert_eq!(once.value(), twice.value());
        }

        #[test]
        fn email_normalisation_is_idempotent_for_any_accepted_input(raw in "\\PC{0,80}") {
            if let Ok(once) = Identifier::email(&raw) {
                let twice = Identifier::email(once.value()).unwrap();
                prop_assert_eq!(once.value(), twice.value());
            }
        }

        #[test]
        fn pseudonym_is_ps_and_64_hex(
            tenant_id in "[A-Za-z0-9_-]{1,64}",
            value in "[!-~]{1,128}",
            kind in prop_oneof![Just(0u8), Just(1u8)],
        ) {
            let id = if kind == 0 {
                Identifier::contact_id(&value).unwrap()
            } else {
                Identifier::email(&format!("{}@x.example", value.replace('@', "a"))).unwrap()
            };
            let p = PseudonymKey::derive(&app_secret(), &tenant(&tenant_id)).pseudonym(&id);
            let s = p.as_str();
            prop_assert!(s.starts_with("ps_"));
            prop_assert_eq!(s.len(), 3 + 64);
            prop_assert!(s[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert!(Pseudonym::parse(s).is_ok());
        }
    }
}
