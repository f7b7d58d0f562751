//! The fleet rate limiter's cost: store writes and added latency per call, on SQLite and
//! optionally DynamoDB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BenchArgs;
use crate::settings::Settings;

/// The fleet rate limiter's cost on one store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimiterCost {
    /// `sqlite` or `dynamodb`.
    pub store: String,
    /// Calls made.
    pub calls: u64,
    /// Shared-store writes per 1,000 calls.
    pub writes_per_1000_calls: f64,
    /// Mean time a call spent in `acquire` (store round trips included), microseconds.
    pub mean_added_us: f64,
    /// 99th percentile of that, microseconds.
    pub p99_added_us: u64,
}

/// Workers × tasks calling a model of 60,000 rpm (a 1 s window of 983) with a 100 ms "call"
/// after each acquire, for `run`: demand (640/s per worker) stays under the key, so what
/// `acquire` costs is the limiter itself.
async fn limiter_cost(store_name: &str, store: Arc<dyn crate::backend::RateStore>, run: Duration) -> LimiterCost {
    use crate::ratelimit::RateLimits;
    let mut models = std::collections::BTreeMap::new();
    models.insert("bench-model".to_string(), crate::settings::ModelSettings { rpm: 60_000, tpm: 0, ..Default::default() });
    let rl = Arc::new(RateLimits::fleet(&models, 1_000, store, 0, 1));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let rl = rl.clone();
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            while t0.elapsed() < run {
                let t = Instant::now();
                rl.acquire("bench-model", 500).await;
                waits.push(t.elapsed().as_micros() as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            waits
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    let calls = all.len() as u64;
    LimiterCost {
        store: store_name.into(),
        calls,
        writes_per_1000_calls: rl.store_writes() as f64 * 1000.0 / calls.max(1) as f64,
        mean_added_us: all.iter().sum::<u64>() as f64 / calls.max(1) as f64,
        p99_added_us: all.get((all.len() * 99 / 100).min(all.len().saturating_sub(1))).copied().unwrap_or(0),
    }
}

/// The limiter's cost on the SQLite store, and on DynamoDB at `--limiter-dynamodb-endpoint`
/// (a scratch budget table is provisioned there).
pub(super) async fn limiter_costs(args: &BenchArgs) -> Result<Vec<LimiterCost>, String> {
    let run = Duration::from_secs(10);
    let local = crate::backend::local::LocalBackend::open_scratch(crate::backend::local::QueueOptions {
        queue_name: "bench".into(),
        dlq_name: "bench-dlq".into(),
        visibility_timeout: Duration::from_secs(30),
        max_receive_count: 3,
    })
    .map_err(|e| e.to_string())?;
    let mut out = vec![limiter_cost("sqlite", local.rates.clone(), run).await];
    if let Some(endpoint) = &args.limiter_dynamodb_endpoint {
        let d = Settings::default();
        let s = Settings {
            stage: format!("bench{}", std::process::id()),
            aws: crate::settings::AwsSettings { endpoint_url: endpoint.clone(), region: "us-east-1".into(), ..d.aws.clone() },
            ..d
        };
        let sdk = crate::backend::aws::sdk_config(&s).await;
        crate::backend::aws::provision::provision_budget_table(&s, &sdk).await.map_err(|e| e.to_string())?;
        let store = crate::backend::aws::DynamoRateStore::new(crate::backend::aws::calls::dynamodb(&sdk), s.budget_table());
        out.push(limiter_cost("dynamodb", Arc::new(store), run).await);
    }
    Ok(out)
}
