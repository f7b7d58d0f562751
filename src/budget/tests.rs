//! Unit tests of the budget period and the job cap.

use super::job_cap::cap_micros;
use super::*;
use crate::error::JobError;
use chrono::{TimeZone, Utc};

#[test]
fn period_is_utc_month() {
    let t = Utc.with_ymd_and_hms(2025, 3, 31, 23, 59, 59).single().expect("valid date");
    assert_eq!(period(t), "2025-03");
    let t = Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 0).single().expect("valid date");
    assert_eq!(period(t), "2025-12");
    // A local time just after midnight on Apr 1 east of UTC is still March in UTC.
    let local = chrono::FixedOffset::east_opt(2 * 3600).and_then(|o| o.with_ymd_and_hms(2025, 4, 1, 1, 0, 0).single()).expect("valid date");
    assert_eq!(period(local.with_timezone(&Utc)), "2025-03");
}

#[test]
fn job_cap() {
    assert!(check_job_cap(None, 1_000_000_000, 1_000_000_000).is_ok());
    // 0.01 USD = 10_000 µUSD: exactly reaching the cap is allowed, one more is not.
    assert!(check_job_cap(Some(0.01), 4_000, 6_000).is_ok());
    let e = check_job_cap(Some(0.01), 4_000, 6_001).expect_err("over the cap");
    assert!(matches!(e, JobError::Budget { job_cap: true, .. }), "{e:?}");
    assert!(e.message().contains("0.004000"), "{}", e.message());
    assert_eq!(cap_micros(0.07), 70_000);
    assert_eq!(cap_micros(0.000_000_5), 0);
    assert_eq!(cap_micros(f64::NAN), 0);
}
