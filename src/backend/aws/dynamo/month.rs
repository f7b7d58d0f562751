//! The ledger's month item: its holds and totals, decoded, pruned and encoded again.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::attrs::{get_n, get_s, n, s, ts, Item};

/// How long after expiry a lapsed hold is still kept in the month item, milliseconds (a day).
const HOLD_GC_GRACE_MS: i64 = 24 * 3600 * 1000;

/// One live hold, as kept in the month item's `reservations` map.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoredHold {
    pub(super) amount: i64,
    pub(super) expires_at_ms: i64,
    pub(super) job_id: String,
}

/// The month item, decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Month {
    /// 0 when the item does not exist yet.
    pub(super) version: i64,
    pub(super) spent: i64,
    pub(super) reservations: BTreeMap<String, StoredHold>,
    pub(super) by_model: BTreeMap<String, i64>,
    pub(super) by_tenant: BTreeMap<String, i64>,
}

impl Month {
    /// Decodes the month item (missing attributes read as zero or empty).
    pub(super) fn from_item(item: &Item) -> Month {
        let map_n = |k: &str| -> BTreeMap<String, i64> {
            item.get(k)
                .and_then(|v| v.as_m().ok())
                .map(|m| m.iter().filter_map(|(k, v)| v.as_n().ok().and_then(|x| x.parse().ok()).map(|x| (k.clone(), x))).collect())
                .unwrap_or_default()
        };
        let reservations = item
            .get("reservations")
            .and_then(|v| v.as_m().ok())
            .map(|m| {
                m.iter()
                    .filter_map(|(id, v)| {
                        let h = v.as_m().ok()?;
                        Some((
                            id.clone(),
                            StoredHold {
                                amount: get_n(h, "amount")?,
                                expires_at_ms: get_n(h, "expires_at")?,
                                job_id: get_s(h, "job_id").unwrap_or_default().to_string(),
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Month {
            version: get_n(item, "version").unwrap_or(0),
            spent: get_n(item, "spent").unwrap_or(0),
            reservations,
            by_model: map_n("by_model"),
            by_tenant: map_n("by_tenant"),
        }
    }

    /// Folds holds that lapsed more than a day before `now` into spent, charged in full under
    /// [`crate::backend::LAPSED_MODEL`] (the item must not grow with dead workers' leases).
    /// Holds that lapsed recently are kept: they still count in full, and their owner may yet
    /// settle them with the actual amount.
    pub(super) fn prune(&mut self, now: DateTime<Utc>) {
        let horizon = now.timestamp_millis().saturating_sub(HOLD_GC_GRACE_MS);
        let old: Vec<String> = self.reservations.iter().filter(|(_, h)| h.expires_at_ms <= horizon).map(|(id, _)| id.clone()).collect();
        for id in old {
            if let Some(h) = self.reservations.remove(&id) {
                self.spent = self.spent.saturating_add(h.amount);
                *self.by_model.entry(crate::backend::LAPSED_MODEL.to_string()).or_insert(0) += h.amount;
                *self.by_tenant.entry("-".to_string()).or_insert(0) += h.amount;
            }
        }
    }

    /// Whether `id` is held (live or lapsed).
    pub(super) fn holds(&self, id: &str) -> bool {
        self.reservations.contains_key(id)
    }

    /// Every hold neither settled nor released, lapsed ones included.
    pub(super) fn held(&self) -> i64 {
        self.reservations.values().map(|h| h.amount).sum()
    }

    /// Holds whose lease has lapsed at `now`, still counted in full.
    pub(super) fn lapsed(&self, now: DateTime<Utc>) -> i64 {
        let now_ms = now.timestamp_millis();
        self.reservations.values().filter(|h| h.expires_at_ms <= now_ms).map(|h| h.amount).sum()
    }

    /// Holds whose lease is still live at `now`.
    pub(super) fn live_reserved(&self, now: DateTime<Utc>) -> i64 {
        let now_ms = now.timestamp_millis();
        self.reservations.values().filter(|h| h.expires_at_ms > now_ms).map(|h| h.amount).sum()
    }

    /// The item to write as the next version.
    pub(super) fn to_item(&self, period: &str, now: DateTime<Utc>) -> Item {
        // Informational totals as of this write (readers recompute live holds with their `now`).
        let reserved = self.live_reserved(now);
        let holds: Item = self
            .reservations
            .iter()
            .map(|(id, h)| {
                let m: Item = [
                    ("amount".to_string(), n(h.amount)),
                    ("expires_at".to_string(), n(h.expires_at_ms)),
                    ("job_id".to_string(), s(&h.job_id)),
                ]
                .into_iter()
                .collect();
                (id.clone(), AttributeValue::M(m))
            })
            .collect();
        let map_n =
            |m: &BTreeMap<String, i64>| -> AttributeValue { AttributeValue::M(m.iter().map(|(k, v)| (k.clone(), n(*v))).collect()) };
        [
            ("period".to_string(), s(period)),
            ("version".to_string(), n(self.version + 1)),
            ("spent".to_string(), n(self.spent)),
            ("reserved".to_string(), n(reserved)),
            ("committed".to_string(), n(self.spent + self.held())),
            ("reservations".to_string(), AttributeValue::M(holds)),
            ("by_model".to_string(), map_n(&self.by_model)),
            ("by_tenant".to_string(), map_n(&self.by_tenant)),
            ("updated_at".to_string(), s(ts(now))),
        ]
        .into_iter()
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_folds_long_lapsed_holds_into_spent_and_round_trips() {
        let now = Utc::now();
        let mut m = Month { version: 3, spent: 10, ..Month::default() };
        m.reservations.insert(
            "live".into(),
            StoredHold { amount: 5, expires_at_ms: (now + chrono::Duration::seconds(60)).timestamp_millis(), job_id: "j".into() },
        );
        m.reservations.insert(
            "gone".into(),
            StoredHold { amount: 7, expires_at_ms: (now - chrono::Duration::seconds(1)).timestamp_millis(), job_id: "j".into() },
        );
        m.reservations.insert(
            "long-gone".into(),
            StoredHold { amount: 9, expires_at_ms: (now - chrono::Duration::days(2)).timestamp_millis(), job_id: "j".into() },
        );
        assert_eq!(m.live_reserved(now), 5);
        assert_eq!(m.lapsed(now), 16, "lapsed holds count in full");
        assert_eq!(m.held(), 21);
        assert!(m.holds("live") && m.holds("gone"));
        m.by_model.insert("gpt-5".into(), 10);
        let back = Month::from_item(&m.to_item("2025-01", now));
        assert_eq!(back.version, 4);
        assert_eq!(back.reservations, m.reservations);
        assert_eq!(back.by_model, m.by_model);
        m.prune(now);
        let kept: Vec<&str> = m.reservations.keys().map(String::as_str).collect();
        assert_eq!(kept, ["gone", "live"], "recently lapsed holds are kept, old ones folded");
        assert_eq!(m.spent, 19, "the folded hold is charged in full");
        assert_eq!(m.by_model.get(crate::backend::LAPSED_MODEL), Some(&9));
    }
}
