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
    cost_micros(&Usage { input_tokens, cached_input_tokens: 0, output_tokens: price.max_output_tokens as u64, reasoning_tokens: 0 }, price)
}

/// How far a provider's input count may exceed the worker's own before it is implausible: its
/// tokenizer, message framing and the schema's encoding differ from the worker's count by a few
/// percent, never by this much.
pub const INPUT_CLAIM_FACTOR: u64 = 2;
/// Tokens allowed above `INPUT_CLAIM_FACTOR ×` the counted input (short prompts' framing).
pub const INPUT_CLAIM_SLACK: u64 = 1024;

/// A provider's usage, bounded by what the request could have used: input at most
/// `INPUT_CLAIM_FACTOR × counted + INPUT_CLAIM_SLACK`, output at most the request's cap (the
/// provider stops there), cached and reasoning parts at most their wholes. Returns the usage to
/// charge and whether the claim had to be cut (an implausible claim, recorded and alerted on,
/// never charged in full).
pub fn bounded_usage(claimed: &Usage, counted_input: u64, max_output_tokens: u32) -> (Usage, bool) {
    let max_in = counted_input.saturating_mul(INPUT_CLAIM_FACTOR).saturating_add(INPUT_CLAIM_SLACK);
    let max_out = max_output_tokens as u64;
    let input_tokens = claimed.input_tokens.min(max_in);
    let output_tokens = claimed.output_tokens.min(max_out);
    let bounded = Usage {
        input_tokens,
        cached_input_tokens: claimed.cached_input_tokens.min(input_tokens),
        output_tokens,
        reasoning_tokens: claimed.reasoning_tokens.min(output_tokens),
    };
    let cut = bounded != *claimed;
    (bounded, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_usage_is_bounded_by_what_the_request_could_use() {
        let fine = Usage { input_tokens: 1100, cached_input_tokens: 0, output_tokens: 4096, reasoning_tokens: 1000 };
        assert_eq!(bounded_usage(&fine, 1000, 4096), (fine, false), "a few percent off the count is the provider's count");
        let absurd = Usage { input_tokens: 4_000_000_000, cached_input_tokens: 0, output_tokens: 1_000_000, reasoning_tokens: 2_000_000 };
        let (b, cut) = bounded_usage(&absurd, 1000, 1000);
        assert!(cut);
        assert_eq!(b, Usage { input_tokens: 3024, cached_input_tokens: 0, output_tokens: 1000, reasoning_tokens: 1000 });
        let p = price(1.25, 0.125, 10.0); // max_output_tokens 1000, as above
        assert!(cost_micros(&b, &p) < 3 * worst_case_micros(1000, &p), "never more than a small multiple of the worst case");
    }

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
        assert!(
            worst_case_micros(10_000, &p)
                >= cost_micros(&Usage { input_tokens: 10_000, cached_input_tokens: 5000, output_tokens: 999, reasoning_tokens: 0 }, &p)
        );
    }

    #[test]
    fn fractional_micros_round_up() {
        let p = price(0.05, 0.005, 0.40);
        let u = Usage { input_tokens: 3, cached_input_tokens: 0, output_tokens: 0, reasoning_tokens: 0 };
        assert_eq!(cost_micros(&u, &p), 1); // 0.15 µUSD rounds up
    }
}
