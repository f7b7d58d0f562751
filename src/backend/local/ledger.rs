//! The embedded [`BudgetLedger`]: periods, reservations, charges, charge lines and declared
//! bounds in the stage's SQLite file.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::db::{micros, Db, DbResult};
use super::ScratchDir;
use crate::backend::{BResult, BackendError, BudgetLedger, Charge, LedgerSnapshot, Reservation, ReserveOutcome};

/// Expired reservations are purged once they are this old (they stop counting as soon as they
/// expire; the grace only keeps the table small without surprising callers that pass old `now`s).
const RESERVATION_GC_GRACE_MICROS: i64 = 24 * 60 * 60 * 1_000_000;

// ---------------------------------------------------------------------------------------------
// Budget ledger

/// The embedded budget ledger: per period, live reservations and settled charges (keyed by
/// reservation id, which makes settle idempotent), plus the period's running spend.
pub struct SqliteLedger {
    db: Db,
    pub(super) _guard: Option<Arc<ScratchDir>>,
}

impl SqliteLedger {
    /// A ledger on an opened database.
    pub fn new(db: Db) -> SqliteLedger {
        SqliteLedger { db, _guard: None }
    }
}

fn spent_in(conn: &Connection, period: &str) -> BResult<i64> {
    Ok(conn
        .prepare_cached("SELECT spent FROM budget_periods WHERE period = ?1")
        .db()?
        .query_row(params![period], |r| r.get::<_, i64>(0))
        .optional()
        .db()?
        .unwrap_or(0))
}

/// Every hold of the period neither settled nor released (live and lapsed), except `except`.
fn held(conn: &Connection, period: &str, except: &str) -> BResult<i64> {
    conn.prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM budget_reservations WHERE period = ?1 AND id <> ?2")
        .db()?
        .query_row(params![period, except], |r| r.get(0))
        .db()
}

/// Holds of the period that are live at `now_us` (`live`) or lapsed (`!live`).
fn held_by_expiry(conn: &Connection, period: &str, now_us: i64, live: bool) -> BResult<i64> {
    let sql = if live {
        "SELECT COALESCE(SUM(amount), 0) FROM budget_reservations WHERE period = ?1 AND expires_at > ?2"
    } else {
        "SELECT COALESCE(SUM(amount), 0) FROM budget_reservations WHERE period = ?1 AND expires_at <= ?2"
    };
    conn.prepare_cached(sql).db()?.query_row(params![period, now_us], |r| r.get(0)).db()
}

/// Adds `amount` to the period's running spend.
fn add_spent(conn: &Connection, period: &str, amount: i64) -> BResult<()> {
    conn.prepare_cached(
        "INSERT INTO budget_periods (period, spent) VALUES (?1, ?2)
         ON CONFLICT(period) DO UPDATE SET spent = spent + excluded.spent",
    )
    .db()?
    .execute(params![period, amount])
    .db()?;
    Ok(())
}

/// Folds holds that lapsed more than a day before `now_us` into spend, charged in full under
/// [`crate::backend::LAPSED_MODEL`] (a later settle of one of them changes nothing).
fn fold_lapsed(conn: &Connection, period: &str, now_us: i64) -> BResult<()> {
    let horizon = now_us.saturating_sub(RESERVATION_GC_GRACE_MICROS);
    let old: Vec<(String, String, i64)> = {
        let mut st =
            conn.prepare_cached("SELECT id, job_id, amount FROM budget_reservations WHERE period = ?1 AND expires_at < ?2").db()?;
        let it = st.query_map(params![period, horizon], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).db()?;
        it.collect::<rusqlite::Result<_>>().db()?
    };
    for (id, job_id, amount) in old {
        let charge = Charge::single(id, job_id, crate::backend::LAPSED_MODEL, None, amount);
        insert_charge(conn, period, &charge)?;
    }
    Ok(())
}

/// Records `c` once per reservation id (with its lines), adds it to spend and drops the hold.
fn insert_charge(conn: &Connection, period: &str, c: &Charge) -> BResult<()> {
    let first = c.lines.first();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO budget_charges (period, reservation_id, job_id, model, tenant, amount)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(period, reservation_id) DO NOTHING",
        )
        .db()?
        .execute(params![
            period,
            c.reservation_id,
            c.job_id,
            first.map(|l| l.model.as_str()).unwrap_or("-"),
            first.and_then(|l| l.tenant.as_deref()),
            c.amount_micros
        ])
        .db()?;
    if inserted == 1 {
        add_spent(conn, period, c.amount_micros)?;
        for l in &c.lines {
            conn.prepare_cached(
                "INSERT INTO budget_charge_lines (period, reservation_id, model, tenant, amount)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(period, reservation_id, model, tenant) DO UPDATE SET amount = amount + excluded.amount",
            )
            .db()?
            .execute(params![period, c.reservation_id, l.model, l.tenant.as_deref().unwrap_or("-"), l.amount_micros])
            .db()?;
        }
    }
    conn.prepare_cached("DELETE FROM budget_reservations WHERE period = ?1 AND id = ?2")
        .db()?
        .execute(params![period, c.reservation_id])
        .db()?;
    Ok(())
}

/// The period's settled spend grouped by `column` (`model` or `tenant`): lines, plus charges
/// written before lines existed.
fn breakdown(conn: &Connection, period: &str, column: &str) -> BResult<std::collections::BTreeMap<String, i64>> {
    let legacy = if column == "model" { "c.model" } else { "COALESCE(c.tenant, '-')" };
    let sql = format!(
        "SELECT k, SUM(a) FROM (
           SELECT {column} AS k, amount AS a FROM budget_charge_lines WHERE period = ?1
           UNION ALL
           SELECT {legacy} AS k, c.amount AS a FROM budget_charges c WHERE c.period = ?1 AND NOT EXISTS (
             SELECT 1 FROM budget_charge_lines l WHERE l.period = c.period AND l.reservation_id = c.reservation_id)
         ) GROUP BY k"
    );
    let mut st = conn.prepare_cached(&sql).db()?;
    let it = st.query_map(params![period], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
    it.collect::<rusqlite::Result<_>>().db()
}

#[async_trait]
impl BudgetLedger for SqliteLedger {
    async fn reserve(&self, period: &str, reservation: &Reservation, limit_micros: i64, now: DateTime<Utc>) -> BResult<ReserveOutcome> {
        if reservation.amount_micros < 0 {
            return Err(BackendError::Other("a reservation cannot be negative".into()));
        }
        let period = period.to_string();
        let r = reservation.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let now_us = micros(now);
                let settled: Option<i64> = tx
                    .prepare_cached("SELECT 1 FROM budget_charges WHERE period = ?1 AND reservation_id = ?2")
                    .db()?
                    .query_row(params![period, r.id], |row| row.get(0))
                    .optional()
                    .db()?;
                if settled.is_some() {
                    // Already turned into a charge: the money is counted; nothing more to hold.
                    return Ok(ReserveOutcome::Granted);
                }
                let existing: Option<i64> = tx
                    .prepare_cached("SELECT expires_at FROM budget_reservations WHERE period = ?1 AND id = ?2")
                    .db()?
                    .query_row(params![period, r.id], |row| row.get(0))
                    .optional()
                    .db()?;
                if existing.is_some() {
                    // Held already (live or lapsed): it counts once.
                    return Ok(ReserveOutcome::Granted);
                }
                fold_lapsed(&tx, &period, now_us)?;
                let spent = spent_in(&tx, &period)?;
                let reserved = held(&tx, &period, &r.id)?;
                let total = i128::from(spent) + i128::from(reserved) + i128::from(r.amount_micros);
                if total > i128::from(limit_micros) {
                    return Ok(ReserveOutcome::Refused { spent_micros: spent, reserved_micros: reserved });
                }
                tx.prepare_cached(
                    "INSERT INTO budget_reservations (period, id, job_id, amount, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(period, id) DO UPDATE SET
                       job_id = excluded.job_id, amount = excluded.amount, expires_at = excluded.expires_at",
                )
                .db()?
                .execute(params![period, r.id, r.job_id, r.amount_micros, micros(r.expires_at)])
                .db()?;
                tx.commit().db()?;
                Ok(ReserveOutcome::Granted)
            })
            .await
    }

    async fn settle(&self, period: &str, charge: &Charge) -> BResult<()> {
        if charge.amount_micros < 0 {
            return Err(BackendError::Other("a charge cannot be negative".into()));
        }
        let period = period.to_string();
        let c = charge.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                insert_charge(&tx, &period, &c)?;
                tx.commit().db()
            })
            .await
    }

    async fn release(&self, period: &str, reservation_id: &str) -> BResult<()> {
        let (period, id) = (period.to_string(), reservation_id.to_string());
        self.db
            .call(move |conn| {
                conn.prepare_cached("DELETE FROM budget_reservations WHERE period = ?1 AND id = ?2")
                    .db()?
                    .execute(params![period, id])
                    .db()?;
                Ok(())
            })
            .await
    }

    async fn snapshot(&self, period: &str, now: DateTime<Utc>) -> BResult<LedgerSnapshot> {
        let period = period.to_string();
        self.db
            .call(move |conn| {
                let tx = conn.transaction().db()?;
                let mut snap = LedgerSnapshot { period: period.clone(), ..Default::default() };
                snap.spent_micros = spent_in(&tx, &period)?;
                snap.reserved_micros = held_by_expiry(&tx, &period, micros(now), true)?;
                snap.lapsed_micros = held_by_expiry(&tx, &period, micros(now), false)?;
                snap.by_model = breakdown(&tx, &period, "model")?;
                snap.by_tenant = breakdown(&tx, &period, "tenant")?;
                tx.commit().db()?;
                Ok(snap)
            })
            .await
    }

    async fn declare(&self, period: &str, reservation_id: &str, bound_micros: i64, expires_at: DateTime<Utc>) -> BResult<bool> {
        let (period, id) = (period.to_string(), reservation_id.to_string());
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "INSERT INTO budget_bounds (period, id, bound, closed, expires_at) VALUES (?1, ?2, ?3, 0, ?4)
                         ON CONFLICT(period, id) DO UPDATE SET bound = excluded.bound, expires_at = excluded.expires_at
                         WHERE budget_bounds.closed = 0",
                    )
                    .db()?
                    .execute(params![period, id, bound_micros, micros(expires_at)])
                    .db()?;
                Ok(n > 0)
            })
            .await
    }

    async fn close(&self, period: &str, reservation_id: &str) -> BResult<Option<i64>> {
        let (period, id) = (period.to_string(), reservation_id.to_string());
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                tx.prepare_cached(
                    "INSERT INTO budget_bounds (period, id, bound, closed, expires_at) VALUES (?1, ?2, NULL, 1, ?3)
                     ON CONFLICT(period, id) DO UPDATE SET closed = 1",
                )
                .db()?
                .execute(params![period, id, micros(Utc::now() + crate::backend::BOUND_KEPT)])
                .db()?;
                let bound: Option<i64> = tx
                    .prepare_cached("SELECT bound FROM budget_bounds WHERE period = ?1 AND id = ?2")
                    .db()?
                    .query_row(params![period, id], |row| row.get(0))
                    .db()?;
                tx.commit().db()?;
                Ok(bound)
            })
            .await
    }

    async fn lapsed(&self, period: &str, before: DateTime<Utc>) -> BResult<Vec<Reservation>> {
        let period = period.to_string();
        self.db
            .call(move |conn| {
                // The maintenance pass every worker makes: also forget bounds past their keep
                // time (DynamoDB's TTL does this for its bound items).
                conn.prepare_cached("DELETE FROM budget_bounds WHERE expires_at < ?1").db()?.execute(params![micros(Utc::now())]).db()?;
                let mut st = conn
                    .prepare_cached(
                        "SELECT id, job_id, amount, expires_at FROM budget_reservations WHERE period = ?1 AND expires_at < ?2 ORDER BY expires_at",
                    )
                    .db()?;
                let rows = st
                    .query_map(params![period, micros(before)], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
                    })
                    .db()?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, job_id, amount_micros, exp) = row.db()?;
                    let expires_at = DateTime::<Utc>::from_timestamp_micros(exp).unwrap_or(DateTime::<Utc>::MIN_UTC);
                    out.push(Reservation { id, job_id, amount_micros, expires_at });
                }
                Ok(out)
            })
            .await
    }
}
