//! Who a run leaves out (`custody::suppression`): subjects under a restriction of
//! processing, always, and with the settings' `exclude_withdrawn_consent` those who
//! withdrew consent for [`EXPORT_PURPOSE`].
//!
//! A conversation's subject is its contact. HighLevel's export endpoint names the
//! contact by `contactId` on every message (a required field of its message DTO);
//! it carries neither the contact's email nor phone (`meta.email` holds message ids
//! only), and the connection's scope reads no contacts. So a conversation is matched
//! by the pseudonym of its contact id(s) as [`IdentifierKind::ContactId`]: a
//! restriction recorded for the contact id (as privacy requests and consent name
//! HighLevel contacts) leaves it out.
//!
//! The list is loaded once per invocation, when the first conversation is about to be
//! written; the application secret (and the tenant's pseudonym key) only when the list
//! is not empty.

use std::collections::BTreeSet;

use custody::TenantId;
use custody::highlevel::Message;
use custody::store::{Store, StoreError};
use custody::subject::{AppSecret, Identifier, PseudonymKey, SubjectError};
use custody::suppression::{EXPORT_PURPOSE, Reason, Suppressed};

#[derive(Debug, thiserror::Error)]
pub enum ExclusionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SubjectError),
}

/// One invocation's list of who is left out, with the key to test contacts against it.
#[derive(Debug)]
pub struct Exclusions {
    suppressed: Suppressed,
    /// `None` when nobody is suppressed: no pseudonym is computed.
    key: Option<PseudonymKey>,
}

impl Exclusions {
    /// The tenant's restricted subjects and, with `withdrawn_consent`, those who
    /// withdrew consent for exports.
    pub async fn load(
        store: &Store,
        secret: &AppSecret,
        tenant: &TenantId,
        withdrawn_consent: bool,
    ) -> Result<Self, ExclusionError> {
        let suppressed =
            Suppressed::load(store, tenant, withdrawn_consent.then_some(EXPORT_PURPOSE)).await?;
        let key = if suppressed.is_empty() {
            None
        } else {
            Some(PseudonymKey::derive(secret.get().await?, tenant))
        };
        Ok(Self { suppressed, key })
    }

    /// Why the conversation of `messages` is left out, if it is.
    pub fn reason(&self, messages: &[Message]) -> Option<Reason> {
        let key = self.key.as_ref()?;
        let pseudonyms: Vec<String> = contacts(messages)
            .into_iter()
            .map(|id| key.pseudonym(&id).to_string())
            .collect();
        self.suppressed
            .reason(pseudonyms.iter().map(String::as_str))
    }
}

/// The distinct contacts the messages name (one per conversation in HighLevel; a
/// value that is not a valid contact id names nobody).
fn contacts(messages: &[Message]) -> Vec<Identifier> {
    let ids: BTreeSet<&str> = messages.iter().map(|m| m.contact_id.as_str()).collect();
    ids.into_iter()
        .filter_map(|id| Identifier::contact_id(id).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(contact: &str) -> Message {
        serde_json::from_value(serde_json::json!({
            "id": "m1",
            "messageType": "TYPE_SMS",
            "locationId": "loc",
            "contactId": contact,
            "conversationId": "c1",
            "dateAdded": "2025-01-01T00:00:00.000Z",
            "body": "hello",
        }))
        .unwrap()
    }

    #[test]
    fn a_conversation_is_matched_by_its_contact_ids_pseudonym() {
        let secret = secrecy::SecretSlice::from(vec![7u8; 32]);
        let tenant = TenantId::parse("acme").unwrap();
        let key = PseudonymKey::derive(&secret, &tenant);
        let of = |contact: &str| {
            key.pseudonym(&Identifier::contact_id(contact).unwrap())
                .to_string()
        };
        let exclusions = Exclusions {
            suppressed: Suppressed::of([of("restricted")], [of("withdrawn")]),
            key: Some(PseudonymKey::derive(&secret, &tenant)),
        };
        assert_eq!(exclusions.reason(&[message("someone")]), None);
        assert_eq!(exclusions.reason(&[]), None);
        assert_eq!(
            exclusions.reason(&[message(" withdrawn "), message("withdrawn")]),
            Some(Reason::ConsentWithdrawn)
        );
        assert_eq!(
            exclusions.reason(&[message("withdrawn"), message("restricted")]),
            Some(Reason::Restricted)
        );
        // Another tenant's key gives other pseudonyms: nobody matches.
        let other = Exclusions {
            suppressed: exclusions.suppressed.clone(),
            key: Some(PseudonymKey::derive(
                &secret,
                &TenantId::parse("globex").unwrap(),
            )),
        };
        assert_eq!(other.reason(&[message("restricted")]), None);
        // Nobody suppressed: no key, nothing computed.
        let none = Exclusions {
            suppressed: Suppressed::default(),
            key: None,
        };
        assert_eq!(none.reason(&[message("restricted")]), None);
        assert_eq!(contacts(&[message(""), message("a b")]).len(), 0);
    }
}
