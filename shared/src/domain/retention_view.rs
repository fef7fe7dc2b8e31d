//! The tenant's effective retention table as the API shows it (`GET /retention`).
//!
//! Built from `kernel::retention` alone, one row per class of `RetentionClass::ALL`:
//! nothing is restated here, so a new or split class appears without a change.
//! The periods are the same for every tenant (no tenant setting changes them); what
//! a tenant chooses is the class of each import, so that choice is part of the view.

use serde::Serialize;

use crate::kernel::retention::{
    ABORT_INCOMPLETE_MULTIPART_DAYS, NONCURRENT_VERSION_DAYS, Period, RetentionClass, Store,
};
use crate::kernel::tenant::TenantId;

/// The whole table for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionView {
    pub tenant: String,
    pub classes: Vec<ClassView>,
    pub imports: ImportChoice,
    /// Days an old object version lives after it stops being current (every bucket).
    pub noncurrent_version_days: i32,
    /// Days before an unfinished multipart upload is aborted (every bucket).
    pub abort_incomplete_multipart_days: i32,
}

/// One retention class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassView {
    pub name: &'static str,
    pub period: PeriodView,
    pub store: StoreName,
    pub promise: &'static str,
    pub mechanism: &'static str,
}

/// A period as a number and a unit. `at_least` marks a floor with no automatic
/// deletion (the audit log), so a client never reads it as "deleted after".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PeriodView {
    pub value: i64,
    pub unit: Unit,
    pub at_least: bool,
    pub expires_automatically: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Minutes,
    Days,
}

/// Where a class lives, by a stable name (the kernel's `Store` is not an API type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreName {
    Table,
    AuditTable,
    ImportsBucket,
    DsarResultsBucket,
    LogGroups,
    PointInTimeRecovery,
    Buckets,
    FailureQueues,
}

/// The import classes the tenant may choose per import, and the one used when an
/// import names none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportChoice {
    pub classes: Vec<&'static str>,
    pub default_class: &'static str,
}

impl From<Period> for PeriodView {
    fn from(period: Period) -> Self {
        let (value, unit, at_least) = match period {
            Period::Minutes(m) => (m, Unit::Minutes, false),
            Period::Days(d) => (d, Unit::Days, false),
            Period::AtLeastDays(d) => (d, Unit::Days, true),
        };
        PeriodView {
            value,
            unit,
            at_least,
            expires_automatically: !at_least,
        }
    }
}

impl From<Store> for StoreName {
    // Exhaustive, so a new store does not compile until it has an API name.
    fn from(store: Store) -> Self {
        match store {
            Store::Table => StoreName::Table,
            Store::AuditTable => StoreName::AuditTable,
            Store::ImportsBucket => StoreName::ImportsBucket,
            Store::DsarResultsBucket => StoreName::DsarResultsBucket,
            Store::LogGroups => StoreName::LogGroups,
            Store::PointInTimeRecovery => StoreName::PointInTimeRecovery,
            Store::Buckets => StoreName::Buckets,
            Store::FailureQueues => StoreName::FailureQueues,
        }
    }
}

impl ClassView {
    pub fn of(class: RetentionClass) -> Self {
        ClassView {
            name: class.name(),
            period: class.period().into(),
            store: class.store().into(),
            promise: class.promise(),
            mechanism: class.mechanism(),
        }
    }
}

impl RetentionView {
    pub fn for_tenant(tenant: &TenantId) -> Self {
        RetentionView {
            tenant: tenant.to_string(),
            classes: RetentionClass::ALL.into_iter().map(ClassView::of).collect(),
            imports: ImportChoice {
                classes: RetentionClass::import_classes()
                    .into_iter()
                    .map(RetentionClass::name)
                    .collect(),
                default_class: RetentionClass::default_import_class().name(),
            },
            noncurrent_version_days: NONCURRENT_VERSION_DAYS,
            abort_incomplete_multipart_days: ABORT_INCOMPLETE_MULTIPART_DAYS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_is_a_row_with_its_numbers() {
        let tenant = TenantId::parse("acme").unwrap();
        let view = RetentionView::for_tenant(&tenant);
        assert_eq!(view.classes.len(), RetentionClass::ALL.len());
        for (row, class) in view.classes.iter().zip(RetentionClass::ALL) {
            assert_eq!(row.name, class.name());
            match class.period() {
                Period::Minutes(m) => {
                    assert_eq!((row.period.value, row.period.unit), (m, Unit::Minutes))
                }
                Period::Days(d) => assert_eq!((row.period.value, row.period.unit), (d, Unit::Days)),
                Period::AtLeastDays(d) => {
                    assert_eq!((row.period.value, row.period.unit), (d, Unit::Days));
                    assert!(row.period.at_least && !row.period.expires_automatically);
                }
            }
            assert_eq!(row.period.expires_automatically, class.duration().is_some());
        }
        assert!(view.imports.classes.contains(&view.imports.default_class));
    }

    #[test]
    fn serialises_units_and_stores_as_stable_names() {
        let view = PeriodView::from(Period::AtLeastDays(730));
        assert_eq!(
            serde_json::to_value(view).unwrap(),
            serde_json::json!({"value": 730, "unit": "days", "at_least": true, "expires_automatically": false})
        );
        assert_eq!(
            serde_json::to_value(StoreName::from(Store::PointInTimeRecovery)).unwrap(),
            "point-in-time-recovery"
        );
    }
}
