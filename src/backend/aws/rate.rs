//! The DynamoDB [`RateStore`]: one item per key and window in the stage's budget table,
//! `period = "rate#{key}#{window}"`, with `requests` and `tokens` (numbers), `full` (set when the
//! provider said the window is spent) and `expires_at` (TTL, epoch seconds).
//!
//! A take is one `UpdateItem` that `ADD`s the units under a condition comparing each total with
//! a bound computed client-side (`cap − want`; DynamoDB does no arithmetic in conditions). When
//! the whole batch does not fit, the failed condition returns the item and the take retries
//! once with what fits ([`rate_fit`]). Writes never read first and never conflict on a version,
//! so many workers taking from one window cost one write each.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use super::classify;
use super::dynamo::{get_consistent, get_n, n, Item};
use crate::backend::{rate_fit, BResult, RateStore, RateUnits, RATE_WINDOW_RETENTION_SECS};

/// Tries of one take: the batch asked for, then what fits, then what fits after a race.
const TAKE_TRIES: usize = 3;

/// The shared rate-limit capacity in the budget table (see [`RateStore`]).
#[derive(Debug, Clone)]
pub struct DynamoRateStore {
    client: Client,
    table: String,
}

impl DynamoRateStore {
    /// A rate store in `table` (the stage's budget table).
    pub fn new(client: Client, table: impl Into<String>) -> DynamoRateStore {
        DynamoRateStore { client, table: table.into() }
    }
}

fn item_id(key: &str, window: u64) -> String {
    format!("rate#{key}#{window}")
}

fn item_key(key: &str, window: u64) -> AttributeValue {
    AttributeValue::S(item_id(key, window))
}

fn expires_at() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // The window ends within minutes of now; keep it the retention past that.
    now + 2 * RATE_WINDOW_RETENTION_SECS
}

fn units_of(item: &Item) -> (RateUnits, bool) {
    let num = |k: &str| get_n(item, k).unwrap_or(0);
    let used = RateUnits {
        requests: u32::try_from(num("requests").max(0)).unwrap_or(u32::MAX),
        tokens: u64::try_from(num("tokens").max(0)).unwrap_or(0),
    };
    (used, item.contains_key("full"))
}

impl DynamoRateStore {
    async fn read(&self, key: &str, window: u64) -> BResult<(RateUnits, bool)> {
        let item = get_consistent(&self.client, &self.table, "period", &item_id(key, window)).await?;
        Ok(item.as_ref().map(units_of).unwrap_or_default())
    }
}

#[async_trait]
impl RateStore for DynamoRateStore {
    async fn take(&self, key: &str, window: u64, want: RateUnits, cap: RateUnits) -> BResult<RateUnits> {
        let mut ask = want;
        for _ in 0..TAKE_TRIES {
            if ask == RateUnits::default() {
                return Ok(ask);
            }
            let (Some(r_bound), Some(t_bound)) = (cap.requests.checked_sub(ask.requests), cap.tokens.checked_sub(ask.tokens)) else {
                // More than a whole window: see what fits.
                let (used, full) = self.read(key, window).await?;
                if full {
                    return Ok(RateUnits::default());
                }
                ask = rate_fit(ask, used, cap);
                continue;
            };
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("period", item_key(key, window))
                .update_expression("SET #exp = if_not_exists(#exp, :exp) ADD #r :r, #t :t")
                .condition_expression(
                    "attribute_not_exists(#full) AND (attribute_not_exists(#r) OR #r <= :rb) \
                     AND (attribute_not_exists(#t) OR #t <= :tb)",
                )
                .expression_attribute_names("#r", "requests")
                .expression_attribute_names("#t", "tokens")
                .expression_attribute_names("#full", "full")
                .expression_attribute_names("#exp", "expires_at")
                .expression_attribute_values(":r", n(ask.requests))
                .expression_attribute_values(":t", n(ask.tokens))
                .expression_attribute_values(":rb", n(r_bound))
                .expression_attribute_values(":tb", n(t_bound))
                .expression_attribute_values(":exp", n(expires_at()))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            match res {
                Ok(_) => return Ok(ask),
                Err(e) => {
                    let old = match e.as_service_error() {
                        Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item.clone(),
                        _ => return Err(classify(&e)),
                    };
                    // Emulators may not return the old item; read it.
                    let (used, full) = match old {
                        Some(item) if !item.is_empty() => units_of(&item),
                        _ => self.read(key, window).await?,
                    };
                    if full {
                        return Ok(RateUnits::default());
                    }
                    ask = rate_fit(ask, used, cap);
                }
            }
        }
        Ok(RateUnits::default())
    }

    async fn give_back(&self, key: &str, window: u64, units: RateUnits) -> BResult<()> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("period", item_key(key, window))
            .update_expression("ADD #r :r, #t :t")
            .condition_expression("attribute_exists(#r) AND #r >= :rr AND #t >= :tt")
            .expression_attribute_names("#r", "requests")
            .expression_attribute_names("#t", "tokens")
            .expression_attribute_values(":r", n(-i64::from(units.requests)))
            .expression_attribute_values(":t", n(-i64::try_from(units.tokens).unwrap_or(i64::MAX)))
            .expression_attribute_values(":rr", n(units.requests))
            .expression_attribute_values(":tt", n(units.tokens))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Nothing (or less) to give back: never below zero.
            Err(e) if matches!(e.as_service_error(), Some(UpdateItemError::ConditionalCheckFailedException(_))) => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }

    async fn fill(&self, key: &str, window: u64) -> BResult<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("period", item_key(key, window))
            .update_expression("SET #full = :yes, #exp = if_not_exists(#exp, :exp)")
            .expression_attribute_names("#full", "full")
            .expression_attribute_names("#exp", "expires_at")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":exp", n(expires_at()))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }
}
