//! Who must be left out of processing: subjects under a restriction of processing
//! (GDPR Art. 18 and 21, a `restrict` privacy request), and subjects who withdrew
//! consent for a purpose (a consent record whose current state is `withdrawn`).
//!
//! One marker per (scope, subject) in the tenant's partition,
//! `T#<tenant>` / `SUPP#<scope>#<pseudonym>`, written where the restriction or the
//! withdrawal is recorded and deleted where it is lifted or consent is given again.
//! A run (an import's delivery, an export) loads the tenant's whole list with one
//! query per scope and tests each row's pseudonyms against a set, so the check costs
//! no request per row. Markers are subject-indexed: erasing the subject erases them.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::kernel::store::{Entity, Key, Store, StoreError, keys};
use crate::kernel::tenant::TenantId;

/// Sort-key prefix of every marker.
const PREFIX: &str = "SUPP#";
/// The purpose exports are checked against (export settings'
/// `exclude_withdrawn_consent`).
pub const EXPORT_PURPOSE: &str = "export";

/// What a marker suppresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every processing: imports' pushes and exports.
    Restricted,
    /// Processing for one purpose.
    ConsentWithdrawn(String),
}

impl Scope {
    /// `restrict` or `consent:<purpose>`.
    pub fn name(&self) -> String {
        match self {
            Scope::Restricted => "restrict".to_owned(),
            Scope::ConsentWithdrawn(purpose) => format!("consent:{purpose}"),
        }
    }

    fn sk_prefix(&self) -> String {
        format!("{PREFIX}{}#", self.name())
    }
}

/// Why a row was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Restricted,
    ConsentWithdrawn,
}

/// One subject's marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    pub tenant: TenantId,
    pub pseudonym: String,
    /// [`Scope::name`].
    pub scope: String,
    /// What put it in force: `privacy_request:<id>` or `consent`.
    pub by: String,
    pub since: DateTime<Utc>,
}

impl Entity for Suppression {
    const KIND: &'static str = "suppression";

    fn key(&self) -> Key {
        Key::new(
            keys::tenant(&self.tenant),
            format!("{PREFIX}{}#{}", self.scope, self.pseudonym),
        )
    }

    fn subject_index(&self) -> Option<(String, String)> {
        Some((
            keys::subject(&self.tenant, &self.pseudonym),
            format!("suppression#{}", self.scope),
        ))
    }
}

/// Puts `scope` in force for each of `pseudonyms` (idempotent: a marker already
/// there is overwritten with the same meaning).
pub async fn suppress(
    store: &Store,
    tenant: &TenantId,
    scope: &Scope,
    pseudonyms: &[String],
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for pseudonym in pseudonyms {
        store
            .put(&Suppression {
                tenant: tenant.clone(),
                pseudonym: pseudonym.clone(),
                scope: scope.name(),
                by: by.to_owned(),
                since: now,
            })
            .await?;
    }
    Ok(())
}

/// Lifts `scope` for each of `pseudonyms` (idempotent).
pub async fn lift(
    store: &Store,
    tenant: &TenantId,
    scope: &Scope,
    pseudonyms: &[String],
) -> Result<(), StoreError> {
    for pseudonym in pseudonyms {
        store
            .delete(&Key::new(
                keys::tenant(tenant),
                format!("{}{pseudonym}", scope.sk_prefix()),
            ))
            .await?;
    }
    Ok(())
}

/// A tenant's suppressed subjects, loaded once per run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suppressed {
    restricted: HashSet<String>,
    withdrawn: HashSet<String>,
}

impl Suppressed {
    /// The tenant's restricted subjects and, with `purpose`, those who withdrew
    /// consent for it.
    pub async fn load(
        store: &Store,
        tenant: &TenantId,
        purpose: Option<&str>,
    ) -> Result<Self, StoreError> {
        let pk = keys::tenant(tenant);
        let pseudonyms = |items: Vec<Suppression>| -> HashSet<String> {
            items.into_iter().map(|s| s.pseudonym).collect()
        };
        let restricted = pseudonyms(store.query_all(&pk, &Scope::Restricted.sk_prefix()).await?);
        let withdrawn = match purpose {
            Some(purpose) => pseudonyms(
                store
                    .query_all(
                        &pk,
                        &Scope::ConsentWithdrawn(purpose.to_owned()).sk_prefix(),
                    )
                    .await?,
            ),
            None => HashSet::new(),
        };
        Ok(Self {
            restricted,
            withdrawn,
        })
    }

    /// A list made of these sets (tests, and callers that already hold them).
    pub fn of(
        restricted: impl IntoIterator<Item = String>,
        withdrawn: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            restricted: restricted.into_iter().collect(),
            withdrawn: withdrawn.into_iter().collect(),
        }
    }

    /// Nobody is suppressed: callers skip computing pseudonyms.
    pub fn is_empty(&self) -> bool {
        self.restricted.is_empty() && self.withdrawn.is_empty()
    }

    /// Why a subject known by any of `pseudonyms` is left out, if it is. A
    /// restriction wins over a withdrawal (it covers every purpose).
    pub fn reason<'a>(&self, pseudonyms: impl IntoIterator<Item = &'a str>) -> Option<Reason> {
        let mut found = None;
        for pseudonym in pseudonyms {
            if self.restricted.contains(pseudonym) {
                return Some(Reason::Restricted);
            }
            if self.withdrawn.contains(pseudonym) {
                found = Some(Reason::ConsentWithdrawn);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restriction_wins_and_unknown_subjects_pass() {
        let list = Suppressed::of(["p:r".to_owned()], ["p:w".to_owned()]);
        assert_eq!(list.reason(["p:x"]), None);
        assert_eq!(list.reason(["p:w"]), Some(Reason::ConsentWithdrawn));
        assert_eq!(list.reason(["p:w", "p:r"]), Some(Reason::Restricted));
        assert_eq!(list.reason(["p:x", "p:r"]), Some(Reason::Restricted));
        assert!(!list.is_empty());
        assert!(Suppressed::default().is_empty());
    }

    #[test]
    fn scopes_have_disjoint_prefixes() {
        let restricted = Scope::Restricted.sk_prefix();
        let consent = Scope::ConsentWithdrawn("restrict".into()).sk_prefix();
        assert_ne!(restricted, consent);
        assert!(!consent.starts_with(&restricted));
        assert!(!restricted.starts_with(&consent));
        // A purpose cannot spell another purpose's prefix: purposes have no '#'.
        let a = Scope::ConsentWithdrawn("mail".into()).sk_prefix();
        let b = Scope::ConsentWithdrawn("mail-x".into()).sk_prefix();
        assert!(!b.starts_with(&a));
    }
}
