//! Prices and costs. Money is counted in integer micro-USD everywhere it is summed (ledger,
//! job records), so the ledger's total equals the sum of job costs exactly.

use crate::job::Usage;
use crate::settings::ModelSettings;

/// Micro-USD per USD.
pub const MICROS_PER_USD: f64 = 1_000_000.0;

/// Converts micro-USD to USD.
pub fn micros_to_usd(m: i64) -> f64 {
    m as f64 / MICROS_PER_USD
}

/// Converts USD to micro-USD, rounding up (a cap is never exceeded by rounding).
pub fn usd_to_micros_ceil(usd: f64) -> i64 {
    (usd * MICROS_PER_USD).ceil() as i64
}

/// What a call with this usage costs at list price, micro-USD, rounded up.
///
/// Cached input tokens are billed at the cached rate, the rest of the input at the input rate;
/// output tokens (reasoning included) at the output rate. Prices are USD per 1M tokens, so
/// `tokens × price` is micro-USD.
pub fn cost_micros(usage: &Usage, price: &ModelSettings) -> i64 {
    let cached = usage.cached_input_tokens.min(usage.input_tokens);
    let uncached = usage.input_tokens - cached;
    let micros = uncached as f64 * price.input_usd_per_mtok
        + cached as f64 * price.cached_input_usd_per_mtok
        + usage.output_tokens as f64 * price.output_usd_per_mtok;
    // Guard against float noise turning an exact value into value+1.
    (micros - 1e-9).ceil().max(0.0) as i64
}

/// The worst case of a call: every input token uncached and the full output allowance used.
pub fn worst_case_micros(input_tokens: u64, price: &ModelSettings) -> i64 {
    cost_micros(
        &Usage {
            input_tokens,
            cached_input_tokens: 0,
            output_tokens: price.max_output_tokens as u64,
            reasoning_tokens: 0,
        },
        price,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(i: f64, c: f64, o: f64) -> ModelSettings {
        ModelSettings {
            input_usd_per_mtok: i,
            cached_input_usd_per_mtok: c,
            output_usd_per_mtok: o,
            max_output_tokens: 1000,
            ..ModelSettings::default()
        }
    }

    #[test]
    fn cost_uses_each_rate() {
        let p = price(1.25, 0.125, 10.0);
        let u = Usage { input_tokens: 1000, cached_input_tokens: 200, output_tokens: 100, reasoning_tokens: 50 };
        // 800 × 1.25 + 200 × 0.125 + 100 × 10 = 1000 + 25 + 1000
        assert_eq!(cost_micros(&u, &p), 2025);
    }

    #[test]
    fn worst_case_counts_full_output() {
        let p = price(0.05, 0.005, 0.40);
        // 10_000 × 0.05 + 1000 × 0.40 = 500 + 400
        assert_eq!(worst_case_micros(10_000, &p), 900);
        assert!(worst_case_micros(10_000, &p) >= cost_micros(&Usage { input_tokens: 10_000, cached_input_tokens: 5000, output_tokens: 999, reasoning_tokens: 0 }, &p));
    }

    #[test]
    fn fractional_micros_round_up() {
        let p = price(0.05, 0.005, 0.40);
        let u = Usage { input_tokens: 3, cached_input_tokens: 0, output_tokens: 0, reasoning_tokens: 0 };
        assert_eq!(cost_micros(&u, &p), 1); // 0.15 µUSD rounds up
    }
}
