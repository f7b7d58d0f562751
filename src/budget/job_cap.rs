//! A job's own cost cap (`max_cost_usd`), checked before each call.

use crate::error::JobError;
use crate::pricing::micros_to_usd;

/// Checks a job's own cap (`max_cost_usd`) before a call: refused when what the job has spent
/// so far plus this call's worst case would pass it. `None` means no cap.
///
/// The cap is converted to micro-USD rounding down, so rounding never lets a job pass it.
/// A refusal is [`JobError::Budget`] with `job_cap: true` (the job is failed, not deferred).
pub fn check_job_cap(max_cost_usd: Option<f64>, spent_micros: i64, worst_case_micros: i64) -> Result<(), JobError> {
    let Some(cap_usd) = max_cost_usd else {
        return Ok(());
    };
    let cap = cap_micros(cap_usd);
    let after = spent_micros.max(0).saturating_add(worst_case_micros.max(0));
    if after > cap {
        return Err(JobError::Budget {
            message: format!(
                "job cap max_cost_usd=${cap_usd} would be passed: spent ${:.6} so far, next call may cost up to ${:.6}",
                micros_to_usd(spent_micros),
                micros_to_usd(worst_case_micros)
            ),
            job_cap: true,
            retry_after: None,
        });
    }
    Ok(())
}

/// A USD cap in micro-USD, rounded down (a tiny epsilon absorbs float noise such as
/// `0.07 × 1e6 = 70000.00000000001`).
pub(super) fn cap_micros(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    (usd * crate::pricing::MICROS_PER_USD + 1e-6).floor() as i64
}
