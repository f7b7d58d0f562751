//! [`DynamoLedger`]: the [`BudgetLedger`] contract on the budget table, by optimistic,
//! version-conditioned writes of the month item.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use rand::Rng;

use super::attrs::{get_consistent, get_n, n, s, ts, Item};
use super::month::{Month, StoredHold};
use crate::backend::aws::{classify, condition_held};
use crate::backend::{BResult, BackendError, BudgetLedger, Charge, LedgerSnapshot, Reservation, ReserveOutcome};

/// Tries of one optimistic ledger update before giving up with a transient error.
const LEDGER_TRIES: u32 = 60;

/// Sleeps a jittered, growing backoff before try `attempt` (1-based) of a contended write.
async fn backoff(attempt: u32) {
    let cap_ms = (5u64 << attempt.min(6)).min(250);
    let ms = rand::rng().random_range(1..=cap_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The fleet-wide budget ledger (`atlas-codex-budget-{stage}`) on DynamoDB: one item per month,
/// changed by optimistic, version-conditioned writes.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
}

/// The charge item's key for a reservation id.
fn charge_key(period: &str, reservation_id: &str) -> String {
    format!("{period}#charge#{reservation_id}")
}

/// The item holding the ceiling a reservation's holder declared (`bound`, `closed`, a TTL on
/// `expires_at`): one small item per lease, written without touching the month item.
fn bound_key(period: &str, reservation_id: &str) -> String {
    format!("{period}#bound#{reservation_id}")
}

impl DynamoLedger {
    /// The ledger in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> DynamoLedger {
        DynamoLedger { client, table: table.into() }
    }

    /// One item of the budget table by key, read consistently.
    async fn read(&self, key: &str) -> BResult<Option<Item>> {
        get_consistent(&self.client, &self.table, "period", key).await
    }

    /// The month item of `period`, decoded (empty when it does not exist yet).
    async fn read_month(&self, period: &str) -> BResult<Month> {
        Ok(self.read(period).await?.map(|i| Month::from_item(&i)).unwrap_or_default())
    }

    /// A `Put` of the next version of the month item, conditional on the version read.
    fn month_put(&self, period: &str, month: &Month, now: DateTime<Utc>) -> BResult<Put> {
        let b = Put::builder().table_name(&self.table).set_item(Some(month.to_item(period, now)));
        let b = if month.version == 0 {
            b.condition_expression("attribute_not_exists(#p)").expression_attribute_names("#p", "period")
        } else {
            b.condition_expression("#v = :v")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":v", n(month.version))
        };
        b.build().map_err(|e| BackendError::Other(format!("ledger put: {e}")))
    }

    /// Writes the next version of the month item; `Ok(false)` when another writer got there first.
    async fn write_month(&self, period: &str, month: &Month, now: DateTime<Utc>) -> BResult<bool> {
        let put = self.month_put(period, month, now)?;
        let res = self
            .client
            .put_item()
            .table_name(put.table_name())
            .set_item(Some(put.item().clone()))
            .set_condition_expression(put.condition_expression().map(str::to_string))
            .set_expression_attribute_names(put.expression_attribute_names().cloned())
            .set_expression_attribute_values(put.expression_attribute_values().cloned())
            .send()
            .await;
        condition_held(res)
    }

    /// A `Put` of the charge item `key` for a settle, conditional on its absence: the item that
    /// makes settling exactly-once per reservation id.
    fn charge_put(&self, key: &str, charge: &Charge, now: DateTime<Utc>) -> BResult<Put> {
        let first = charge.lines.first();
        let tenant = first.and_then(|l| l.tenant.clone());
        let mut charge_item: Item = [
            ("period", s(key)),
            ("reservation_id", s(&charge.reservation_id)),
            ("job_id", s(&charge.job_id)),
            ("model", s(first.map(|l| l.model.as_str()).unwrap_or("-"))),
            ("tenant", s(tenant.clone().unwrap_or_default())),
            ("lines", n(charge.lines.len())),
            ("amount", n(charge.amount_micros)),
            ("settled_at", s(ts(now))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if tenant.is_none() {
            charge_item.remove("tenant");
        }
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(charge_item))
            .condition_expression("attribute_not_exists(#p)")
            .expression_attribute_names("#p", "period")
            .build()
            .map_err(|e| BackendError::Other(format!("ledger put: {e}")))
    }

    /// The error when a change kept losing to other writers.
    fn contention(period: &str) -> BackendError {
        BackendError::Transient(format!("budget ledger {period}: too much contention ({LEDGER_TRIES} tries)"))
    }
}

#[async_trait]
impl BudgetLedger for DynamoLedger {
    async fn reserve(&self, period: &str, reservation: &Reservation, limit_micros: i64, now: DateTime<Utc>) -> BResult<ReserveOutcome> {
        if reservation.amount_micros < 0 {
            return Err(BackendError::Other(format!("reservation {}: negative amount", reservation.id)));
        }
        for attempt in 1..=LEDGER_TRIES {
            let mut month = self.read_month(period).await?;
            month.prune(now);
            if month.holds(&reservation.id) {
                return Ok(ReserveOutcome::Granted);
            }
            let reserved = month.held();
            // The bound is computed here: DynamoDB cannot add in a condition.
            let bound = limit_micros.saturating_sub(reservation.amount_micros);
            if month.spent.saturating_add(reserved) > bound {
                return Ok(ReserveOutcome::Refused { spent_micros: month.spent, reserved_micros: reserved });
            }
            month.reservations.insert(
                reservation.id.clone(),
                StoredHold {
                    amount: reservation.amount_micros,
                    expires_at_ms: reservation.expires_at.timestamp_millis(),
                    job_id: reservation.job_id.clone(),
                },
            );
            if self.write_month(period, &month, now).await? {
                return Ok(ReserveOutcome::Granted);
            }
            backoff(attempt).await;
        }
        Err(Self::contention(period))
    }

    async fn settle(&self, period: &str, charge: &Charge) -> BResult<()> {
        let key = charge_key(period, &charge.reservation_id);
        for attempt in 1..=LEDGER_TRIES {
            if self.read(&key).await?.is_some() {
                return Ok(()); // settled before: exactly once
            }
            let now = Utc::now();
            let mut month = self.read_month(period).await?;
            month.prune(now);
            month.reservations.remove(&charge.reservation_id);
            month.spent = month.spent.saturating_add(charge.amount_micros);
            for line in &charge.lines {
                *month.by_model.entry(line.model.clone()).or_insert(0) += line.amount_micros;
                let tenant = line.tenant.clone().unwrap_or_else(|| "-".into());
                *month.by_tenant.entry(tenant).or_insert(0) += line.amount_micros;
            }
            let charge_put = self.charge_put(&key, charge, now)?;
            let month_put = self.month_put(period, &month, now)?;
            let res = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(charge_put).build())
                .transact_items(TransactWriteItem::builder().put(month_put).build())
                .send()
                .await;
            match res {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let cancelled = matches!(e.as_service_error(), Some(TransactWriteItemsError::TransactionCanceledException(_)));
                    let err = classify(&e);
                    if !cancelled && !matches!(err, BackendError::Conflict(_)) {
                        return Err(err);
                    }
                    // Either the charge exists (checked at the top of the next try) or the
                    // month moved on: read again.
                }
            }
            backoff(attempt).await;
        }
        Err(Self::contention(period))
    }

    async fn release(&self, period: &str, reservation_id: &str) -> BResult<()> {
        for attempt in 1..=LEDGER_TRIES {
            let now = Utc::now();
            let mut month = self.read_month(period).await?;
            if month.reservations.remove(reservation_id).is_none() {
                return Ok(());
            }
            month.prune(now);
            if self.write_month(period, &month, now).await? {
                return Ok(());
            }
            backoff(attempt).await;
        }
        Err(Self::contention(period))
    }

    async fn snapshot(&self, period: &str, now: DateTime<Utc>) -> BResult<LedgerSnapshot> {
        let month = self.read_month(period).await?;
        Ok(LedgerSnapshot {
            period: period.to_string(),
            spent_micros: month.spent,
            reserved_micros: month.live_reserved(now),
            lapsed_micros: month.lapsed(now),
            by_model: month.by_model,
            by_tenant: month.by_tenant,
        })
    }

    async fn declare(&self, period: &str, reservation_id: &str, bound_micros: i64, expires_at: DateTime<Utc>) -> BResult<bool> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("period", s(bound_key(period, reservation_id)))
            .update_expression("SET #b = :b, expires_at = :e")
            .condition_expression("attribute_not_exists(#c)")
            .expression_attribute_names("#b", "bound")
            .expression_attribute_names("#c", "closed")
            .expression_attribute_values(":b", n(bound_micros))
            .expression_attribute_values(":e", n(expires_at.timestamp()))
            .send()
            .await;
        condition_held(res)
    }

    async fn close(&self, period: &str, reservation_id: &str) -> BResult<Option<i64>> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("period", s(bound_key(period, reservation_id)))
            .update_expression("SET #c = :t, expires_at = if_not_exists(expires_at, :e)")
            .expression_attribute_names("#c", "closed")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":e", n((Utc::now() + crate::backend::BOUND_KEPT).timestamp()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out.attributes.as_ref().and_then(|a| get_n(a, "bound")))
    }

    async fn lapsed(&self, period: &str, before: DateTime<Utc>) -> BResult<Vec<Reservation>> {
        let month = self.read_month(period).await?;
        let before_ms = before.timestamp_millis();
        Ok(month
            .reservations
            .into_iter()
            .filter(|(_, h)| h.expires_at_ms < before_ms)
            .map(|(id, h)| Reservation {
                id,
                job_id: h.job_id,
                amount_micros: h.amount,
                expires_at: DateTime::<Utc>::from_timestamp_millis(h.expires_at_ms).unwrap_or(DateTime::<Utc>::MIN_UTC),
            })
            .collect())
    }
}
