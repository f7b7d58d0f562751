//! Shared DynamoDB helpers: item and attribute conversion, stored timestamps, and the one
//! consistent read by key.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::backend::aws::classify;
use crate::backend::BResult;

/// A DynamoDB item: attribute name to value.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// A timestamp as stored: fixed-width RFC 3339 UTC with nanoseconds, so that string order is
/// time order.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Reads a stored timestamp back (`None` when it is not RFC 3339).
pub(super) fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// A string attribute.
pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The string attribute `k` of an item, if it has one.
pub(super) fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// The number attribute `k` of an item as an integer, if it has one.
pub(crate) fn get_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok())
}

/// Expression attribute names from `(placeholder, name)` pairs.
pub(super) fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// One strongly consistent `GetItem` by partition key (job store and ledger alike).
pub(crate) async fn get_consistent(client: &Client, table: &str, key: &str, value: &str) -> BResult<Option<Item>> {
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
}
