//! The embedded [`RateStore`]: one `rate_windows` row per key and window in the stage's SQLite
//! file, changed in `BEGIN IMMEDIATE` transactions so several worker processes on one machine
//! share the same limits.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{Db, DbResult, ScratchDir};
use crate::backend::{rate_fit, BResult, RateStore, RateUnits, RATE_WINDOW_RETENTION_SECS};

/// The embedded shared rate-limit capacity (see [`RateStore`]).
pub struct SqliteRateStore {
    db: Db,
    /// Keeps a scratch directory alive.
    pub(super) _guard: Option<Arc<ScratchDir>>,
}

impl SqliteRateStore {
    /// A rate store on an opened database.
    pub fn new(db: Db) -> SqliteRateStore {
        SqliteRateStore { db, _guard: None }
    }
}

/// Rows of windows that ended more than [`RATE_WINDOW_RETENTION_SECS`] ago are deleted every
/// this many windows (windows are numbered from the epoch, so old ones have small numbers).
const GC_EVERY_WINDOWS: u64 = 64;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl RateStore for SqliteRateStore {
    async fn take(&self, key: &str, window: u64, want: RateUnits, cap: RateUnits) -> BResult<RateUnits> {
        let key = key.to_string();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let row = tx
                    .query_row(
                        "SELECT requests, tokens, full FROM rate_windows WHERE key = ?1 AND window = ?2",
                        params![key, to_i64(window)],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
                    )
                    .optional()
                    .db()?;
                let full = row.is_some_and(|(_, _, f)| f != 0);
                let used = row
                    .map(|(r, t, _)| RateUnits {
                        requests: u32::try_from(r.max(0)).unwrap_or(u32::MAX),
                        tokens: u64::try_from(t.max(0)).unwrap_or(0),
                    })
                    .unwrap_or_default();
                let got = if full { RateUnits::default() } else { rate_fit(want, used, cap) };
                if got != RateUnits::default() {
                    tx.execute(
                        "INSERT INTO rate_windows (key, window, requests, tokens) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (key, window) DO UPDATE SET requests = requests + ?3, tokens = tokens + ?4",
                        params![key, to_i64(window), i64::from(got.requests), to_i64(got.tokens)],
                    )
                    .db()?;
                }
                if window % GC_EVERY_WINDOWS == 0 {
                    // Windows are at least a second long, so this keeps at least the retention.
                    tx.execute(
                        "DELETE FROM rate_windows WHERE key = ?1 AND window < ?2",
                        params![key, to_i64(window.saturating_sub(RATE_WINDOW_RETENTION_SECS))],
                    )
                    .db()?;
                }
                tx.commit().db()?;
                Ok(got)
            })
            .await
    }

    async fn give_back(&self, key: &str, window: u64, units: RateUnits) -> BResult<()> {
        let key = key.to_string();
        self.db
            .call(move |conn| {
                conn.execute(
                    "UPDATE rate_windows SET requests = MAX(0, requests - ?3), tokens = MAX(0, tokens - ?4)
                     WHERE key = ?1 AND window = ?2",
                    params![key, to_i64(window), i64::from(units.requests), to_i64(units.tokens)],
                )
                .db()?;
                Ok(())
            })
            .await
    }

    async fn fill(&self, key: &str, window: u64) -> BResult<()> {
        let key = key.to_string();
        self.db
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO rate_windows (key, window, requests, tokens, full) VALUES (?1, ?2, 0, 0, 1)
                     ON CONFLICT (key, window) DO UPDATE SET full = 1",
                    params![key, to_i64(window)],
                )
                .db()?;
                Ok(())
            })
            .await
    }
}
