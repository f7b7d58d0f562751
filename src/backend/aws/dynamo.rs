//! DynamoDB implementations: [`DynamoJobStore`] (the job table) and [`DynamoLedger`] (the budget
//! ledger).
//!
//! ## Job table layout (`id` partition key)
//! | attribute | type | meaning |
//! |---|---|---|
//! | `id` | S | job id |
//! | `status` | S | `pending` / `processing` / `completed` / `failed` (GSI partition key) |
//! | `stage` | S | the stage that ran it |
//! | `created_at`, `updated_at` | S | fixed-width RFC 3339 UTC with nanoseconds (`GSI` sort key) |
//! | `lease_owner` | S | worker holding the lease (absent when none) |
//! | `lease_expires_at` | S | same fixed-width timestamp (absent when none) |
//! | `attempts` | N | claims so far |
//! | `expires_at` | N | DynamoDB TTL, epoch seconds |
//! | `doc` | S | the whole [`JobRecord`] as JSON |
//! | `event_id` | S | the id of the latest end's event (absent before the first end) |
//! | `announcement` | S | that end's [`crate::events::Announcement`] as JSON |
//!
//! The top-level attributes are authoritative for the fields they hold: a claim changes them with
//! one `UpdateItem` without rewriting `doc`, and reads lay them over `doc`. Timestamps are
//! fixed-width (always 9 fractional digits and `Z`), so DynamoDB's string comparison orders them
//! in time: `lease_expires_at < :now` in a condition is a time comparison with a bound computed
//! by the client (DynamoDB does no arithmetic in conditions).
//!
//! ## Ledger layout (`period` partition key)
//! One item per month (`period = "2025-06"`) with `version`, `spent`, `reserved`, `committed`
//! (micro-USD numbers), `reservations` (map id → {amount, expires_at (epoch ms), job_id}),
//! `by_model` and `by_tenant` (maps name → micro-USD). Every change reads the item, decides
//! client-side (dropping expired reservations), and writes it back conditional on `version`
//! (optimistic concurrency, retried with jittered backoff). A settle also creates the item
//! `{period}#charge#{reservation_id}` with `attribute_not_exists` in the same transaction, which
//! makes settling exactly-once per reservation id. See `docs/design-ledger.md` for scaling.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;

use super::{classify, condition_held};
use crate::backend::{BResult, BackendError, BudgetLedger, Charge, Claim, JobStore, LedgerSnapshot, Reservation, ReserveOutcome};
use crate::job::{JobRecord, JobStatus};

/// The job table's GSI for listing by status, newest first.
pub const STATUS_INDEX: &str = "status-created_at-index";
/// Tries of one optimistic ledger update before giving up with a transient error.
const LEDGER_TRIES: u32 = 60;
/// How long after expiry a lapsed hold is still kept in the month item, milliseconds (a day).
const HOLD_GC_GRACE_MS: i64 = 24 * 3600 * 1000;
/// Tries of a claim whose condition failed on a state that has since changed.
const CLAIM_TRIES: u32 = 4;

pub(super) type Item = HashMap<String, AttributeValue>;

/// A timestamp as stored: fixed-width RFC 3339 UTC with nanoseconds, so that string order is
/// time order.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

pub(super) fn get_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok())
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// Sleeps a jittered, growing backoff before try `attempt` (1-based) of a contended write.
async fn backoff(attempt: u32) {
    let cap_ms = (5u64 << attempt.min(6)).min(250);
    let ms = rand::rng().random_range(1..=cap_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---------------------------------------------------------------------------------------------
// Job store
// ---------------------------------------------------------------------------------------------

/// The job table (`atlas-codex-jobs-{stage}`) on DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
    retention_days: u32,
}

impl DynamoJobStore {
    /// The store for `table`; records get a TTL `retention_days` after their last write
    /// (0 keeps them forever).
    pub fn new(client: Client, table: impl Into<String>, retention_days: u32) -> DynamoJobStore {
        DynamoJobStore { client, table: table.into(), retention_days }
    }

    /// The TTL (epoch seconds) for a record last written at `at`.
    fn ttl_from(&self, at: DateTime<Utc>) -> Option<i64> {
        (self.retention_days > 0).then(|| at.timestamp() + i64::from(self.retention_days) * 86_400)
    }

    /// The whole record as a DynamoDB item.
    fn to_item(&self, r: &JobRecord) -> BResult<Item> {
        let doc = serde_json::to_string(r).map_err(|e| BackendError::Other(format!("job {}: cannot encode record: {e}", r.id)))?;
        let mut item = Item::new();
        item.insert("id".into(), s(&r.id));
        item.insert("status".into(), s(r.status.as_str()));
        item.insert("stage".into(), s(&r.stage));
        item.insert("created_at".into(), s(ts(r.created_at)));
        item.insert("updated_at".into(), s(ts(r.updated_at)));
        item.insert("attempts".into(), n(r.attempts));
        if let Some(o) = &r.lease_owner {
            item.insert("lease_owner".into(), s(o));
        }
        if let Some(t) = r.lease_expires_at {
            item.insert("lease_expires_at".into(), s(ts(t)));
        }
        if let Some(ttl) = r.expires_at.or_else(|| self.ttl_from(r.updated_at)) {
            item.insert("expires_at".into(), n(ttl));
        }
        item.insert("doc".into(), s(doc));
        if let Some(a) = &r.announcement {
            item.insert("event_id".into(), s(&a.event_id));
            item.insert("announcement".into(), s(encode_announcement(&r.id, a)?));
        }
        Ok(item)
    }

    async fn get_item(&self, id: &str) -> BResult<Option<Item>> {
        get_consistent(&self.client, &self.table, "id", id).await
    }

    /// Decides what a failed claim condition means, from the item as it was.
    fn refused_claim(item: &Item, now: DateTime<Utc>) -> BResult<Option<Claim>> {
        let rec = from_item(item)?;
        match rec.status {
            JobStatus::Completed => Ok(Some(Claim::AlreadyCompleted(rec))),
            JobStatus::Processing => match (rec.lease_owner.clone(), rec.lease_expires_at) {
                (Some(owner), Some(until)) if until >= now => Ok(Some(Claim::Busy { owner, until })),
                // The state changed since the condition was checked: try again.
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

/// Reads a record from an item: `doc` (or a fresh record when a claim created the item) with the
/// authoritative top-level attributes laid over it.
fn from_item(item: &Item) -> BResult<JobRecord> {
    let id = get_s(item, "id").ok_or_else(|| BackendError::Other("job item without id".into()))?;
    let created_at = get_s(item, "created_at").and_then(parse_ts);
    let stage = get_s(item, "stage").unwrap_or_default();
    let mut rec = match get_s(item, "doc") {
        Some(doc) => {
            serde_json::from_str::<JobRecord>(doc).map_err(|e| BackendError::Other(format!("job {id}: stored record unreadable: {e}")))?
        }
        None => JobRecord::new(id, stage, created_at.unwrap_or_else(Utc::now)),
    };
    rec.id = id.to_string();
    if let Some(st) = get_s(item, "status") {
        rec.status = JobStatus::parse(st).ok_or_else(|| BackendError::Other(format!("job {id}: unknown status `{st}`")))?;
    }
    if !stage.is_empty() {
        rec.stage = stage.to_string();
    }
    if let Some(t) = created_at {
        rec.created_at = t;
    }
    if let Some(t) = get_s(item, "updated_at").and_then(parse_ts) {
        rec.updated_at = t;
    }
    if let Some(a) = get_n(item, "attempts") {
        rec.attempts = u32::try_from(a).unwrap_or(u32::MAX);
    }
    rec.lease_owner = get_s(item, "lease_owner").map(str::to_string);
    rec.lease_expires_at = get_s(item, "lease_expires_at").and_then(parse_ts);
    if let Some(a) = get_s(item, "announcement") {
        rec.announcement =
            Some(serde_json::from_str(a).map_err(|e| BackendError::Other(format!("job {id}: stored announcement unreadable: {e}")))?);
    }
    Ok(rec)
}

fn encode_announcement(id: &str, a: &crate::events::Announcement) -> BResult<String> {
    serde_json::to_string(a).map_err(|e| BackendError::Other(format!("job {id}: cannot encode announcement: {e}")))
}

#[async_trait]
impl JobStore for DynamoJobStore {
    async fn claim(&self, id: &str, stage: &str, owner: &str, lease_until: DateTime<Utc>, now: DateTime<Utc>) -> BResult<Claim> {
        for _ in 0..CLAIM_TRIES {
            let mut update = String::from(
                "SET #status = :processing, #owner = :owner, #lease = :lease, #updated = :now, \
                 #attempts = if_not_exists(#attempts, :zero) + :one, \
                 #stage = if_not_exists(#stage, :stage), #created = if_not_exists(#created, :now)",
            );
            let mut values: Item = [
                (":processing", s("processing")),
                (":pending", s("pending")),
                (":failed", s("failed")),
                (":owner", s(owner)),
                (":lease", s(ts(lease_until))),
                (":now", s(ts(now))),
                (":zero", n(0)),
                (":one", n(1)),
                (":stage", s(stage)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let mut attr_names = names(&[
                ("#id", "id"),
                ("#status", "status"),
                ("#owner", "lease_owner"),
                ("#lease", "lease_expires_at"),
                ("#updated", "updated_at"),
                ("#attempts", "attempts"),
                ("#stage", "stage"),
                ("#created", "created_at"),
            ]);
            if let Some(ttl) = self.ttl_from(now) {
                update.push_str(", #ttl = if_not_exists(#ttl, :ttl)");
                values.insert(":ttl".into(), n(ttl));
                attr_names.insert("#ttl".into(), "expires_at".into());
            }
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("id", s(id))
                .update_expression(update)
                .condition_expression(
                    "attribute_not_exists(#id) OR #status IN (:pending, :failed) \
                     OR (#status = :processing AND (attribute_not_exists(#lease) OR #lease < :now))",
                )
                .set_expression_attribute_names(Some(attr_names))
                .set_expression_attribute_values(Some(values))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            match res {
                Ok(out) => {
                    let item = out.attributes.ok_or_else(|| BackendError::Other(format!("job {id}: claim returned no attributes")))?;
                    return Ok(Claim::Claimed(from_item(&item)?));
                }
                Err(e) => {
                    let old = match e.as_service_error() {
                        Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item.clone(),
                        _ => return Err(classify(&e)),
                    };
                    // Emulators may not return the old item; read it.
                    let old = match old {
                        Some(item) if !item.is_empty() => Some(item),
                        _ => self.get_item(id).await?,
                    };
                    if let Some(item) = old {
                        if let Some(claim) = Self::refused_claim(&item, now)? {
                            return Ok(claim);
                        }
                    }
                }
            }
        }
        Err(BackendError::Transient(format!("job {id}: claim kept racing with other writers")))
    }

    async fn renew(&self, id: &str, owner: &str, lease_until: DateTime<Utc>) -> BResult<bool> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(id))
            .update_expression("SET #lease = :lease")
            .condition_expression("#status = :processing AND #owner = :owner")
            .set_expression_attribute_names(Some(names(&[
                ("#lease", "lease_expires_at"),
                ("#status", "status"),
                ("#owner", "lease_owner"),
            ])))
            .expression_attribute_values(":lease", s(ts(lease_until)))
            .expression_attribute_values(":processing", s("processing"))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        condition_held(res)
    }

    async fn finish(&self, record: &JobRecord, owner: &str) -> BResult<()> {
        let item = self.to_item(record)?;
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("#status = :processing AND #owner = :owner")
            .set_expression_attribute_names(Some(names(&[("#status", "status"), ("#owner", "lease_owner")])))
            .expression_attribute_values(":processing", s("processing"))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => match classify(&e) {
                BackendError::Conflict(_) => {
                    Err(BackendError::Conflict(format!("job {}: lease not held by {owner} (or not processing)", record.id)))
                }
                other => Err(other),
            },
        }
    }

    async fn put_if_absent(&self, record: &JobRecord) -> BResult<bool> {
        let item = self.to_item(record)?;
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", "id")
            .send()
            .await;
        condition_held(res)
    }

    async fn set_announcement(&self, id: &str, announcement: &crate::events::Announcement) -> BResult<bool> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", s(id))
            .update_expression("SET #a = :a")
            .condition_expression("#eid = :eid")
            .set_expression_attribute_names(Some(names(&[("#a", "announcement"), ("#eid", "event_id")])))
            .expression_attribute_values(":a", s(encode_announcement(id, announcement)?))
            .expression_attribute_values(":eid", s(&announcement.event_id))
            .send()
            .await;
        condition_held(res)
    }

    async fn get(&self, id: &str) -> BResult<Option<JobRecord>> {
        match self.get_item(id).await? {
            Some(item) => Ok(Some(from_item(&item)?)),
            None => Ok(None),
        }
    }

    async fn list(&self, status: Option<JobStatus>, limit: usize) -> BResult<Vec<JobRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        match status {
            Some(st) => out = self.query_status(st, limit, false).await?,
            None => loop {
                // No status: a full Scan, sorted here. Fine for operator listings; the worker
                // never lists.
                let page = self
                    .client
                    .scan()
                    .table_name(&self.table)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                for item in page.items() {
                    out.push(from_item(item)?);
                }
                match page.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            },
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn oldest(&self, status: JobStatus, limit: usize) -> BResult<Vec<JobRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.query_status(status, limit, true).await
    }
}

impl DynamoJobStore {
    /// Up to `limit` records of one status from the status index, newest first or oldest
    /// first (`ascending`). The index is eventually consistent.
    async fn query_status(&self, st: JobStatus, limit: usize, ascending: bool) -> BResult<Vec<JobRecord>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(STATUS_INDEX)
                .key_condition_expression("#status = :s")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":s", s(st.as_str()))
                .scan_index_forward(ascending)
                .limit(limit.saturating_sub(out.len()).clamp(1, 1000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(&e))?;
            for item in page.items() {
                out.push(from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if out.len() < limit && !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Budget ledger
// ---------------------------------------------------------------------------------------------

/// The fleet-wide budget ledger (`atlas-codex-budget-{stage}`) on DynamoDB: one item per month,
/// changed by optimistic, version-conditioned writes.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
}

/// One live hold, as kept in the month item's `reservations` map.
#[derive(Debug, Clone, PartialEq)]
struct Hold {
    amount: i64,
    expires_at_ms: i64,
    job_id: String,
}

/// The month item, decoded.
#[derive(Debug, Clone, Default, PartialEq)]
struct Month {
    /// 0 when the item does not exist yet.
    version: i64,
    spent: i64,
    reservations: BTreeMap<String, Hold>,
    by_model: BTreeMap<String, i64>,
    by_tenant: BTreeMap<String, i64>,
}

impl Month {
    fn from_item(item: &Item) -> Month {
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
                            Hold {
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
    fn prune(&mut self, now: DateTime<Utc>) {
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
    fn holds(&self, id: &str) -> bool {
        self.reservations.contains_key(id)
    }

    /// Every hold neither settled nor released, lapsed ones included.
    fn held(&self) -> i64 {
        self.reservations.values().map(|h| h.amount).sum()
    }

    fn lapsed(&self, now: DateTime<Utc>) -> i64 {
        let now_ms = now.timestamp_millis();
        self.reservations.values().filter(|h| h.expires_at_ms <= now_ms).map(|h| h.amount).sum()
    }

    fn live_reserved(&self, now: DateTime<Utc>) -> i64 {
        let now_ms = now.timestamp_millis();
        self.reservations.values().filter(|h| h.expires_at_ms > now_ms).map(|h| h.amount).sum()
    }

    /// The item to write as the next version.
    fn to_item(&self, period: &str, now: DateTime<Utc>) -> Item {
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

    async fn read(&self, key: &str) -> BResult<Option<Item>> {
        get_consistent(&self.client, &self.table, "period", key).await
    }

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
                Hold {
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
            let first = charge.lines.first();
            let tenant = first.and_then(|l| l.tenant.clone());
            let mut charge_item: Item = [
                ("period", s(&key)),
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
            let charge_put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(charge_item))
                .condition_expression("attribute_not_exists(#p)")
                .expression_attribute_names("#p", "period")
                .build()
                .map_err(|e| BackendError::Other(format!("ledger put: {e}")))?;
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

/// One strongly consistent `GetItem` by partition key (job store and ledger alike).
pub(super) async fn get_consistent(client: &Client, table: &str, key: &str, value: &str) -> BResult<Option<Item>> {
    let out = client.get_item().table_name(table).key(key, s(value)).consistent_read(true).send().await.map_err(|e| classify(&e))?;
    Ok(out.item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn stored_timestamps_sort_as_time() {
        let a = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 9).single().expect("ts");
        let b = a + chrono::Duration::milliseconds(1);
        let c = a + chrono::Duration::seconds(1);
        assert!(ts(a) < ts(b) && ts(b) < ts(c));
        assert_eq!(ts(a).len(), ts(c).len());
        assert_eq!(parse_ts(&ts(b)), Some(b));
    }

    #[test]
    fn item_round_trips_a_record() {
        let store = DynamoJobStore::new(
            Client::from_conf(
                aws_sdk_dynamodb::Config::builder().behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest()).build(),
            ),
            "t",
            30,
        );
        let now = Utc::now();
        let mut r = JobRecord::new("job-1", "preview", now);
        r.status = JobStatus::Processing;
        r.lease_owner = Some("w1".into());
        r.lease_expires_at = Some(now + chrono::Duration::seconds(30));
        r.attempts = 2;
        r.cost_micros = 1234;
        let item = store.to_item(&r).expect("item");
        assert_eq!(get_n(&item, "expires_at"), Some(now.timestamp() + 30 * 86_400));
        assert_eq!(from_item(&item).expect("record"), r);
    }

    #[test]
    fn month_folds_long_lapsed_holds_into_spent_and_round_trips() {
        let now = Utc::now();
        let mut m = Month { version: 3, spent: 10, ..Month::default() };
        m.reservations.insert(
            "live".into(),
            Hold { amount: 5, expires_at_ms: (now + chrono::Duration::seconds(60)).timestamp_millis(), job_id: "j".into() },
        );
        m.reservations.insert(
            "gone".into(),
            Hold { amount: 7, expires_at_ms: (now - chrono::Duration::seconds(1)).timestamp_millis(), job_id: "j".into() },
        );
        m.reservations.insert(
            "long-gone".into(),
            Hold { amount: 9, expires_at_ms: (now - chrono::Duration::days(2)).timestamp_millis(), job_id: "j".into() },
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
