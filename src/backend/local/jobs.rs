//! The embedded [`JobStore`]: the `jobs` table, every transition one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::db::{micros, Db, DbResult};
use super::ScratchDir;
use crate::backend::{BResult, BackendError, Claim, JobStore};
use crate::job::{JobRecord, JobStatus};

// ---------------------------------------------------------------------------------------------
// Job store

/// The embedded job table: the record as JSON plus the columns the conditional transitions need
/// (`status`, `lease_owner`, `lease_expires_at` in µs, `created_at` in µs for `list`).
///
/// A live lease is `Busy` for every claimant, its own holder included (a duplicate delivery to
/// the same worker must not start the job twice); a lease is live while `lease_expires_at ≥ now`.
/// `finish` does not look at the lease's expiry: the owner may still write while nobody else
/// has taken the job over.
pub struct SqliteJobStore {
    db: Db,
    pub(super) _guard: Option<Arc<ScratchDir>>,
}

impl SqliteJobStore {
    /// A job store on an opened database.
    pub fn new(db: Db) -> SqliteJobStore {
        SqliteJobStore { db, _guard: None }
    }
}

fn parse_record(id: &str, json: &str) -> BResult<JobRecord> {
    serde_json::from_str(json).map_err(|e| BackendError::Other(format!("stored record of job {id} is unreadable: {e}")))
}

fn record_json(r: &JobRecord) -> BResult<String> {
    serde_json::to_string(r).map_err(|e| BackendError::Other(format!("cannot serialise record of job {}: {e}", r.id)))
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn claim(&self, id: &str, stage: &str, owner: &str, lease_until: DateTime<Utc>, now: DateTime<Utc>) -> BResult<Claim> {
        let (id, stage, owner) = (id.to_string(), stage.to_string(), owner.to_string());
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let row: Option<(String, Option<String>, Option<i64>, String)> = tx
                    .prepare_cached("SELECT status, lease_owner, lease_expires_at, record FROM jobs WHERE id = ?1")
                    .db()?
                    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .optional()
                    .db()?;
                let mut rec = match row {
                    None => {
                        let mut rec = JobRecord::new(&id, &stage, now);
                        rec.status = JobStatus::Processing;
                        rec.attempts = 1;
                        rec.lease_owner = Some(owner.clone());
                        rec.lease_expires_at = Some(lease_until);
                        tx.prepare_cached(
                            "INSERT INTO jobs (id, status, lease_owner, lease_expires_at, created_at, record)
                             VALUES (?1, 'processing', ?2, ?3, ?4, ?5)",
                        )
                        .db()?
                        .execute(params![id, owner, micros(lease_until), micros(now), record_json(&rec)?])
                        .db()?;
                        tx.commit().db()?;
                        return Ok(Claim::Claimed(rec));
                    }
                    Some((status, lease_owner, lease_exp, json)) => {
                        let rec = parse_record(&id, &json)?;
                        let status = JobStatus::parse(&status)
                            .ok_or_else(|| BackendError::Other(format!("job {id} has an unknown stored status `{status}`")))?;
                        match status {
                            JobStatus::Completed => return Ok(Claim::AlreadyCompleted(rec)),
                            JobStatus::Processing => {
                                if let Some(exp) = lease_exp.filter(|e| *e >= micros(now)) {
                                    let until = rec.lease_expires_at.or_else(|| DateTime::from_timestamp_micros(exp)).unwrap_or(now);
                                    return Ok(Claim::Busy { owner: lease_owner.unwrap_or_default(), until });
                                }
                            }
                            JobStatus::Pending | JobStatus::Failed => {}
                        }
                        rec
                    }
                };
                rec.status = JobStatus::Processing;
                rec.attempts = rec.attempts.saturating_add(1);
                rec.lease_owner = Some(owner.clone());
                rec.lease_expires_at = Some(lease_until);
                rec.updated_at = now;
                tx.prepare_cached(
                    "UPDATE jobs SET status = 'processing', lease_owner = ?2, lease_expires_at = ?3, record = ?4
                     WHERE id = ?1",
                )
                .db()?
                .execute(params![id, owner, micros(lease_until), record_json(&rec)?])
                .db()?;
                tx.commit().db()?;
                Ok(Claim::Claimed(rec))
            })
            .await
    }

    async fn renew(&self, id: &str, owner: &str, lease_until: DateTime<Utc>) -> BResult<bool> {
        let (id, owner) = (id.to_string(), owner.to_string());
        // The same text serde writes, so the record stays readable.
        let until_json = match serde_json::to_value(lease_until) {
            Ok(serde_json::Value::String(s)) => s,
            _ => return Err(BackendError::Other("cannot serialise the lease time".into())),
        };
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE jobs SET lease_expires_at = ?3,
                                record = json_set(record, '$.lease_expires_at', ?4)
                         WHERE id = ?1 AND lease_owner = ?2 AND status = 'processing'",
                    )
                    .db()?
                    .execute(params![id, owner, micros(lease_until), until_json])
                    .db()?;
                Ok(n == 1)
            })
            .await
    }

    async fn finish(&self, record: &JobRecord, owner: &str) -> BResult<()> {
        let json = record_json(record)?;
        let id = record.id.clone();
        let owner = owner.to_string();
        let status = record.status.as_str();
        let lease_owner = record.lease_owner.clone();
        let lease_exp = record.lease_expires_at.map(micros);
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE jobs SET status = ?3, lease_owner = ?4, lease_expires_at = ?5, record = ?6
                         WHERE id = ?1 AND lease_owner = ?2 AND status = 'processing'",
                    )
                    .db()?
                    .execute(params![id, owner, status, lease_owner, lease_exp, json])
                    .db()?;
                if n == 1 {
                    return Ok(());
                }
                let current: Option<(String, Option<String>)> = conn
                    .prepare_cached("SELECT status, lease_owner FROM jobs WHERE id = ?1")
                    .db()?
                    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .db()?;
                Err(BackendError::Conflict(match current {
                    None => format!("job {id} does not exist"),
                    Some((s, o)) => {
                        format!("job {id} is `{s}` with lease owner {}; `{owner}` does not hold it", o.as_deref().unwrap_or("(none)"))
                    }
                }))
            })
            .await
    }

    async fn put_if_absent(&self, record: &JobRecord) -> BResult<bool> {
        let json = record_json(record)?;
        let r = record.clone();
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "INSERT INTO jobs (id, status, lease_owner, lease_expires_at, created_at, record)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id) DO NOTHING",
                    )
                    .db()?
                    .execute(params![r.id, r.status.as_str(), r.lease_owner, r.lease_expires_at.map(micros), micros(r.created_at), json])
                    .db()?;
                Ok(n == 1)
            })
            .await
    }

    async fn set_announcement(&self, id: &str, announcement: &crate::events::Announcement) -> BResult<bool> {
        let (id, a) = (id.to_string(), announcement.clone());
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let json: Option<String> = tx
                    .prepare_cached("SELECT record FROM jobs WHERE id = ?1")
                    .db()?
                    .query_row(params![id], |r| r.get(0))
                    .optional()
                    .db()?;
                let Some(json) = json else { return Ok(false) };
                let mut rec = parse_record(&id, &json)?;
                if rec.announcement.as_ref().map(|x| x.event_id.as_str()) != Some(a.event_id.as_str()) {
                    return Ok(false);
                }
                rec.announcement = Some(a);
                tx.prepare_cached("UPDATE jobs SET record = ?2 WHERE id = ?1").db()?.execute(params![id, record_json(&rec)?]).db()?;
                tx.commit().db()?;
                Ok(true)
            })
            .await
    }

    async fn get(&self, id: &str) -> BResult<Option<JobRecord>> {
        let id = id.to_string();
        let id2 = id.clone();
        let json: Option<String> = self
            .db
            .call(move |conn| {
                conn.prepare_cached("SELECT record FROM jobs WHERE id = ?1").db()?.query_row(params![id2], |r| r.get(0)).optional().db()
            })
            .await?;
        json.map(|j| parse_record(&id, &j)).transpose()
    }

    async fn list(&self, status: Option<JobStatus>, limit: usize) -> BResult<Vec<JobRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String)> = self
            .db
            .call(move |conn| {
                let rows = match status {
                    Some(s) => {
                        let mut st = conn
                            .prepare_cached(
                                "SELECT id, record FROM jobs WHERE status = ?1
                                 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
                            )
                            .db()?;
                        let it = st.query_map(params![s.as_str(), limit], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
                        it.collect::<rusqlite::Result<Vec<_>>>()
                    }
                    None => {
                        let mut st =
                            conn.prepare_cached("SELECT id, record FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1").db()?;
                        let it = st.query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
                        it.collect::<rusqlite::Result<Vec<_>>>()
                    }
                };
                rows.db()
            })
            .await?;
        rows.iter().map(|(id, j)| parse_record(id, j)).collect()
    }

    async fn oldest(&self, status: JobStatus, limit: usize) -> BResult<Vec<JobRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String)> = self
            .db
            .call(move |conn| {
                let mut st = conn
                    .prepare_cached("SELECT id, record FROM jobs WHERE status = ?1 ORDER BY created_at ASC, rowid ASC LIMIT ?2")
                    .db()?;
                let it = st.query_map(params![status.as_str(), limit], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
                it.collect::<rusqlite::Result<Vec<_>>>().db()
            })
            .await?;
        rows.iter().map(|(id, j)| parse_record(id, j)).collect()
    }
}
