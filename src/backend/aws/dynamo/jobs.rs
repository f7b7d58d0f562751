//! [`DynamoJobStore`]: the [`JobStore`] contract on the job table.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use super::attrs::{get_consistent, get_n, get_s, n, names, parse_ts, s, ts, Item};
use super::STATUS_INDEX;
use crate::backend::aws::{classify, condition_held};
use crate::backend::{BResult, BackendError, Claim, JobStore};
use crate::job::{JobRecord, JobStatus};

/// Tries of a claim whose condition failed on a state that has since changed.
const CLAIM_TRIES: u32 = 4;

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

    /// The conditional `UpdateItem` of a claim: takes the lease when the job is new, pending or
    /// failed, or its lease has lapsed; returns the item as it is after (or as it was when the
    /// condition failed).
    fn claim_request(&self, id: &str, stage: &str, owner: &str, lease_until: DateTime<Utc>, now: DateTime<Utc>) -> UpdateItemFluentBuilder {
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
        self.client
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
            let res = self.claim_request(id, stage, owner, lease_until, now).send().await;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
