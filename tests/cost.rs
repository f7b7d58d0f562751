//! Cost control end to end: routing under every stage's real config and the seed's switches,
//! budget holds under a concurrent fleet (in-memory ledger and the embedded SQLite ledger), and
//! per-model rate limits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use serde_json::json;

use atlas_codex::backend::local::{LocalBackend, QueueOptions};
use atlas_codex::backend::{BResult, BackendError, BudgetLedger, Charge, LedgerSnapshot, Reservation, ReserveOutcome};
use atlas_codex::budget::{check_job_cap, period, Budget, LEDGER_WRITE_TRIES};
use atlas_codex::error::{Disposition, JobError};
use atlas_codex::job::{parse_message, Job, Route};
use atlas_codex::ratelimit::RateLimits;
use atlas_codex::route::{score, Features, Router};
use atlas_codex::settings::{ModelSettings, Settings, Sources, Strategy};

// ------------------------------------------------------------------------------------------------
// Routing

fn load(stage: &str, env: &[(&str, &str)]) -> Result<Settings, atlas_codex::settings::ConfigError> {
    Settings::load(&Sources {
        stage: Some(stage.to_string()),
        config_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/config").into(),
        extra_file: None,
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    })
}

fn settings(stage: &str, env: &[(&str, &str)]) -> Settings {
    match load(stage, env) {
        Ok(s) => s,
        Err(e) => panic!("stage {stage} with {env:?} should load: {e}"),
    }
}

fn job(v: serde_json::Value) -> Job {
    match parse_message(&v.to_string()) {
        Ok(j) => j,
        Err(e) => panic!("test job {v} should parse: {e}"),
    }
}

fn flat_schema(n: usize) -> serde_json::Value {
    let props: serde_json::Map<String, serde_json::Value> = (0..n).map(|i| (format!("f{i}"), json!({"type": "string"}))).collect();
    json!({"type": "object", "properties": props})
}

/// A table of jobs with the counted input tokens the worker would pass, named for messages.
fn job_table() -> Vec<(&'static str, Job, usize)> {
    let nested = json!({"type": "object", "properties": {
        "title": {"type": "string"}, "summary": {"type": "string"}, "vendor": {"type": "string"},
        "plans": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "price": {"type": "number"},
            "features": {"type": "array", "items": {"type": "string"}}, "limits": {"type": "string"}}}}}});
    vec![
        // 500/400 = 1, 2 props = 4 → 5: nano.
        ("tiny", job(json!({"job_id": "tiny", "text": "Acme Widget, 10 USD", "schema": flat_schema(2)})), 500),
        // 3000/400 = 7, 3 props = 6, "compare" + "rank" = 20 → 33: mini.
        (
            "reasoning",
            job(json!({"job_id": "reasoning", "url": "https://example.com/pricing",
                "instructions": "Compare the plans and RANK them by value.", "schema": flat_schema(3)})),
            3000,
        ),
        // 12000/400 = 30, 8 props = 16, depth 4 (object > array > object > array) = +15,
        // "summarize" = 10 → 71: full.
        (
            "big-nested",
            job(json!({"job_id": "big-nested", "url": "https://example.com/docs",
                "instructions": "Summarize every plan", "schema": nested})),
            12_000,
        ),
        // crawl of 50 pages = 10, 4000/400 = 10, 5 props = 10 → 30: mini (at the threshold).
        (
            "crawl",
            job(json!({"job_id": "crawl", "type": "crawl", "url": "https://example.com/",
                "max_pages": 50, "schema": flat_schema(5)})),
            4000,
        ),
        // Legacy message, instructions only, 1200 tokens = 3 → nano.
        (
            "legacy",
            job(json!({"jobId": "legacy", "type": "scrape",
                "params": {"url": "https://example.com/a", "extractionInstructions": "Get the title"}})),
            1200,
        ),
    ]
}

fn decide_all(router: &Router, used: f64) -> BTreeMap<&'static str, (String, String)> {
    job_table()
        .into_iter()
        .map(|(name, j, tokens)| {
            let f = Features::from_job(&j, tokens);
            let d = match router.decide(&j, &f, used) {
                Ok(d) => d,
                Err(e) => panic!("{name}: {e}"),
            };
            (name, (d.model, d.tier.to_string()))
        })
        .collect()
}

fn expect(rows: &[(&'static str, &str, &str)]) -> BTreeMap<&'static str, (String, String)> {
    rows.iter().map(|(n, m, t)| (*n, (m.to_string(), t.to_string()))).collect()
}

#[test]
fn preview_and_local_route_by_complexity() {
    let want = expect(&[
        ("tiny", "gpt-5-nano", "nano"),
        ("reasoning", "gpt-5-mini", "mini"),
        ("big-nested", "gpt-5", "full"),
        ("crawl", "gpt-5-mini", "mini"),
        ("legacy", "gpt-5-nano", "nano"),
    ]);
    for stage in ["preview", "local"] {
        let s = settings(stage, &[]);
        let r = Router::new(&s);
        assert_eq!(r.strategy(), Strategy::Gpt5Preview, "{stage}");
        assert_eq!(decide_all(&r, 0.0), want, "{stage}");
        // Exactly at the threshold is still below the cheaper-routing line.
        assert_eq!(decide_all(&r, s.routing.prefer_cheaper_above), want, "{stage}");
    }
}

#[test]
fn nearly_spent_budget_drops_one_tier_and_says_so() {
    let s = settings("preview", &[]);
    let r = Router::new(&s);
    let want = expect(&[
        ("tiny", "gpt-5-nano", "nano"),
        ("reasoning", "gpt-5-nano", "nano"),
        ("big-nested", "gpt-5-mini", "mini"),
        ("crawl", "gpt-5-nano", "nano"),
        ("legacy", "gpt-5-nano", "nano"),
    ]);
    assert_eq!(decide_all(&r, 0.85), want);
    let (_, j, tokens) = job_table().remove(2);
    let d = r.decide(&j, &Features::from_job(&j, tokens), 0.85).expect("routes");
    assert!(d.reason.contains("dropped to the cheaper tier mini"), "{}", d.reason);
    assert!(d.downgraded);
    assert!(d.reason.contains("85% used"), "{}", d.reason);
    assert_eq!(d.score, 71, "{}", d.reason);
    let route: Route = d.clone().into();
    assert_eq!((route.model.as_str(), route.tier.as_str(), route.score), ("gpt-5-mini", "mini", 71));
    assert_eq!(route.reason, d.reason);
    // Nano has nowhere to drop to: not downgraded, and the reason does not claim it.
    let (_, j, tokens) = job_table().remove(0);
    let n = r.decide(&j, &Features::from_job(&j, tokens), 0.85).expect("routes");
    assert!(!n.downgraded && !n.reason.contains("cheaper"), "{}", n.reason);
    let n = r.decide(&j, &Features::from_job(&j, tokens), 0.5).expect("routes");
    assert!(!n.downgraded && !n.reason.contains("budget"), "{}", n.reason);
}

#[test]
fn production_and_gpt4_switches_send_everything_to_the_production_model() {
    let all_gpt4o = expect(&[
        ("tiny", "gpt-4o", "production"),
        ("reasoning", "gpt-4o", "production"),
        ("big-nested", "gpt-4o", "production"),
        ("crawl", "gpt-4o", "production"),
        ("legacy", "gpt-4o", "production"),
    ]);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("production", vec![]),
        ("preview", vec![("GPT5_ENABLED", "false")]),
        ("local", vec![("GPT5_ENABLED", "false")]),
        ("preview", vec![("FORCE_GPT4", "true"), ("GPT5_ENABLED", "false")]),
        ("preview", vec![("DEFAULT_MODEL_STRATEGY", "gpt4_stable")]),
        ("local", vec![("DEFAULT_MODEL_STRATEGY", "gpt4_stable")]),
    ];
    for (stage, env) in cases {
        let s = settings(stage, &env);
        let r = Router::new(&s);
        assert_eq!(r.strategy(), Strategy::Gpt4Stable, "{stage} {env:?}");
        for used in [0.0, 0.5, 0.99] {
            assert_eq!(decide_all(&r, used), all_gpt4o, "{stage} {env:?} used {used}");
        }
        assert_eq!(r.escalate("gpt-4o"), None, "{stage} {env:?}");
        assert_eq!(r.fallbacks("gpt-4o"), vec!["gpt-4.1".to_string()], "{stage} {env:?}");
    }
}

#[test]
fn force_gpt4_with_gpt5_enabled_is_a_config_error() {
    // The seed's two switches contradict each other; the stage refuses to start.
    let e = load("preview", &[("FORCE_GPT4", "true")]).expect_err("contradictory switches");
    assert!(e.problems.iter().any(|p| p.contains("pick one")), "{e}");
}

#[test]
fn gpt4_stable_strategy_with_gpt5_enabled_still_honours_gpt5_overrides() {
    // DEFAULT_MODEL_STRATEGY only picks the default route; GPT5_ENABLED still allows gpt-5.
    let s = settings("preview", &[("DEFAULT_MODEL_STRATEGY", "gpt4_stable")]);
    let r = Router::new(&s);
    let j = job(json!({"job_id": "o", "text": "x", "instructions": "title", "model": "gpt-5"}));
    let d = r.decide(&j, &Features::from_job(&j, 10), 0.0).expect("allowed");
    assert_eq!((d.model.as_str(), d.tier.as_str()), ("gpt-5", "override"));
}

/// Every model id the router hands out for anything, in a stage.
fn everything_routable(s: &Settings) -> Vec<(String, String)> {
    let r = Router::new(s);
    let mut out = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let keywords = s.routing.reasoning_keywords.clone();
    // The table, plus random jobs spanning the whole score range, at several budget levels.
    let mut jobs: Vec<(Job, usize)> = job_table().into_iter().map(|(_, j, t)| (j, t)).collect();
    for i in 0..300 {
        let n_kw = rng.random_range(0..=4usize);
        let words: Vec<&str> = (0..n_kw).map(|_| keywords[rng.random_range(0..keywords.len())].as_str()).collect();
        let crawl = rng.random_bool(0.3);
        let mut m = json!({"job_id": format!("r{i}"), "url": "https://example.com/",
            "instructions": format!("Please {} the page", words.join(" and ")),
            "schema": flat_schema(rng.random_range(0..20))});
        if crawl {
            m["type"] = json!("crawl");
            m["max_pages"] = json!(rng.random_range(1..=100));
        }
        jobs.push((job(m), rng.random_range(0..20_000)));
    }
    for (j, tokens) in &jobs {
        let f = Features::from_job(j, *tokens);
        for used in [0.0, 0.5, 0.81, 1.0] {
            if let Ok(d) = r.decide(j, &f, used) {
                out.push((format!("route {}", j.job_id), d.model));
            }
        }
    }
    for id in s.models.keys() {
        let j = job(json!({"job_id": "ov", "text": "x", "instructions": "title", "model": id}));
        match r.decide(&j, &Features::from_job(&j, 10), 0.0) {
            Ok(d) => out.push((format!("override {id}"), d.model)),
            Err(e) => assert_eq!(e.kind(), "model_forbidden", "{e}"),
        }
        if let Some(m) = r.escalate(id) {
            out.push((format!("escalate {id}"), m));
        }
        for m in r.fallbacks(id) {
            out.push((format!("fallback {id}"), m));
        }
    }
    out
}

#[test]
fn no_gpt5_model_is_ever_chosen_where_gpt5_is_not_allowed() {
    let stages: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("production", vec![]),
        ("preview", vec![("GPT5_ENABLED", "false")]),
        ("local", vec![("GPT5_ENABLED", "false")]),
        ("preview", vec![("FORCE_GPT4", "true"), ("GPT5_ENABLED", "false")]),
    ];
    for (stage, env) in stages {
        let s = settings(stage, &env);
        assert!(!s.gpt5_allowed());
        let chosen = everything_routable(&s);
        assert!(chosen.len() > 1000, "the sweep must exercise the router ({})", chosen.len());
        for (what, m) in &chosen {
            let family = s.models.get(m).map(|x| x.family.as_str());
            assert_eq!(family, Some("gpt4"), "{stage} {env:?}: {what} chose {m}");
        }
    }
    // Sanity: the same sweep does reach gpt-5 models where they are allowed.
    let s = settings("preview", &[]);
    assert!(everything_routable(&s).iter().any(|(_, m)| m == "gpt-5"));
}

#[test]
fn overrides_are_honoured_only_where_allowed() {
    let prod = Router::new(&settings("production", &[]));
    for m in ["gpt-5", "gpt-5-mini", "gpt-5-nano"] {
        let j = job(json!({"job_id": "o", "text": "x", "instructions": "title", "model": m}));
        let e = prod.decide(&j, &Features::from_job(&j, 10), 0.0).expect_err("forbidden");
        assert_eq!(e.kind(), "model_forbidden");
        assert_eq!(e.disposition(), Disposition::DeadLetter);
        assert!(e.message().contains(m) && e.message().contains("production"), "{e}");
        assert!(e.message().contains("GPT-5 is not allowed"), "{e}");
    }
    let j = job(json!({"job_id": "o", "text": "x", "instructions": "title", "model": "gpt-4.1"}));
    let d = prod.decide(&j, &Features::from_job(&j, 10), 0.99).expect("gpt-4.1 is allowed");
    assert_eq!((d.model.as_str(), d.tier.as_str()), ("gpt-4.1", "override"));
    assert!(d.reason.contains("asked for `gpt-4.1`"), "{}", d.reason);

    for stage in ["preview", "local", "production"] {
        let r = Router::new(&settings(stage, &[]));
        let j = job(json!({"job_id": "o", "text": "x", "instructions": "title", "model": "gpt-9-ultra"}));
        let e = r.decide(&j, &Features::from_job(&j, 10), 0.0).expect_err("unknown model");
        assert_eq!(e.kind(), "model_forbidden");
        assert!(e.message().contains("gpt-9-ultra") && e.message().contains("not configured"), "{e}");
    }
    // In preview an override is not moved to a cheaper tier by budget pressure.
    let r = Router::new(&settings("preview", &[]));
    let j = job(json!({"job_id": "o", "text": "x", "instructions": "title", "model": "gpt-5"}));
    let d = r.decide(&j, &Features::from_job(&j, 10), 0.99).expect("allowed");
    assert_eq!(d.model, "gpt-5");
}

#[test]
fn escalation_and_fallbacks_in_preview() {
    let s = settings("preview", &[]);
    let r = Router::new(&s);
    assert_eq!(r.escalate("gpt-5-nano").as_deref(), Some("gpt-5-mini"));
    assert_eq!(r.escalate("gpt-5-mini").as_deref(), Some("gpt-5"));
    assert_eq!(r.escalate("gpt-5"), None);
    assert_eq!(r.escalate("gpt-4o"), None);
    assert_eq!(r.escalate("unknown"), None);
    assert_eq!(r.max_escalations(), 2);
    assert_eq!(r.fallbacks("gpt-5"), vec!["gpt-5-mini".to_string()]);
    assert_eq!(r.fallbacks("gpt-5-mini"), vec!["gpt-5-nano".to_string()]);
    assert!(r.fallbacks("gpt-5-nano").is_empty());
    assert!(r.fallbacks("unknown").is_empty());
}

#[test]
fn fallbacks_drop_models_the_stage_may_not_call() {
    let mut s = settings("production", &[]);
    s.routing.fallbacks.insert("gpt-4o".into(), vec!["gpt-5-mini".into(), "gpt-4o".into(), "gpt-4.1".into(), "no-such-model".into()]);
    s.routing.fallbacks.insert("gpt-5".into(), vec!["gpt-5-mini".into()]);
    let r = Router::new(&s);
    assert_eq!(r.fallbacks("gpt-4o"), vec!["gpt-4.1".to_string()]);
    assert!(r.fallbacks("gpt-5").is_empty());
    // And the same chain in a gpt-5 stage keeps the gpt-5 fallback.
    let mut s = settings("preview", &[]);
    s.routing.fallbacks.insert("gpt-4o".into(), vec!["gpt-5-mini".into(), "gpt-4.1".into()]);
    assert_eq!(Router::new(&s).fallbacks("gpt-4o"), vec!["gpt-5-mini".to_string(), "gpt-4.1".to_string()]);
}

#[test]
fn score_explains_itself() {
    let s = settings("preview", &[]);
    let (_, j, tokens) = job_table().remove(1);
    let (n, why) = score(&Features::from_job(&j, tokens), &s.routing);
    assert_eq!(n, 33, "{why}");
    for part in ["input 3000 tokens +7", "schema 3 properties +6", "reasoning keywords [compare, rank] +20"] {
        assert!(why.contains(part), "{why} lacks {part}");
    }
}

// ------------------------------------------------------------------------------------------------
// Budget

/// An in-memory ledger honouring the `BudgetLedger` contract (atomic under one mutex).
#[derive(Default)]
struct MemLedger {
    st: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    /// (period, id) → reservation.
    holds: HashMap<(String, String), Reservation>,
    /// (period, id) → charge.
    charges: HashMap<(String, String), Charge>,
    /// (period, id) → (declared bound, closed).
    bounds: HashMap<(String, String), (Option<i64>, bool)>,
}

impl MemLedger {
    fn lock(&self) -> BResult<std::sync::MutexGuard<'_, MemState>> {
        self.st.lock().map_err(|_| BackendError::Other("poisoned".into()))
    }
}

fn live(st: &MemState, period: &str, _now: DateTime<Utc>, except: &str) -> i64 {
    st.holds
        .iter()
        // Lapsed holds count in full too (the ledger contract): only settle or release frees them.
        .filter(|((p, id), _)| p == period && id != except)
        .map(|(_, r)| r.amount_micros)
        .sum()
}

fn spent(st: &MemState, period: &str) -> i64 {
    st.charges.iter().filter(|((p, _), _)| p == period).map(|(_, c)| c.amount_micros).sum()
}

#[async_trait]
impl BudgetLedger for MemLedger {
    async fn reserve(&self, period: &str, r: &Reservation, limit: i64, now: DateTime<Utc>) -> BResult<ReserveOutcome> {
        tokio::task::yield_now().await;
        let mut st = self.lock()?;
        let key = (period.to_string(), r.id.clone());
        if st.charges.contains_key(&key) || st.holds.contains_key(&key) {
            return Ok(ReserveOutcome::Granted);
        }
        let (s, held) = (spent(&st, period), live(&st, period, now, &r.id));
        if s + held + r.amount_micros > limit {
            return Ok(ReserveOutcome::Refused { spent_micros: s, reserved_micros: held });
        }
        st.holds.insert(key, r.clone());
        Ok(ReserveOutcome::Granted)
    }
    async fn settle(&self, period: &str, c: &Charge) -> BResult<()> {
        tokio::task::yield_now().await;
        let mut st = self.lock()?;
        let key = (period.to_string(), c.reservation_id.clone());
        st.holds.remove(&key);
        st.charges.entry(key).or_insert_with(|| c.clone());
        Ok(())
    }
    async fn release(&self, period: &str, id: &str) -> BResult<()> {
        self.lock()?.holds.remove(&(period.to_string(), id.to_string()));
        Ok(())
    }
    async fn snapshot(&self, period: &str, now: DateTime<Utc>) -> BResult<LedgerSnapshot> {
        let st = self.lock()?;
        let mut snap = LedgerSnapshot {
            period: period.into(),
            spent_micros: spent(&st, period),
            reserved_micros: live(&st, period, now, ""),
            ..Default::default()
        };
        for ((p, _), c) in &st.charges {
            if p == period {
                for line in &c.lines {
                    *snap.by_model.entry(line.model.clone()).or_default() += line.amount_micros;
                    *snap.by_tenant.entry(line.tenant.clone().unwrap_or_else(|| "-".into())).or_default() += line.amount_micros;
                }
            }
        }
        Ok(snap)
    }
    async fn declare(&self, period: &str, id: &str, bound: i64, _expires_at: DateTime<Utc>) -> BResult<bool> {
        let mut st = self.lock()?;
        let e = st.bounds.entry((period.to_string(), id.to_string())).or_insert((None, false));
        if e.1 {
            return Ok(false);
        }
        e.0 = Some(bound);
        Ok(true)
    }
    async fn close(&self, period: &str, id: &str) -> BResult<Option<i64>> {
        let mut st = self.lock()?;
        let e = st.bounds.entry((period.to_string(), id.to_string())).or_insert((None, false));
        e.1 = true;
        Ok(e.0)
    }
    async fn lapsed(&self, period: &str, before: DateTime<Utc>) -> BResult<Vec<Reservation>> {
        let st = self.lock()?;
        Ok(st.holds.iter().filter(|((p, _), r)| p == period && r.expires_at < before).map(|(_, r)| r.clone()).collect())
    }
}

/// A ledger whose settles and releases fail transiently (or for good) a number of times.
struct FlakyLedger {
    inner: MemLedger,
    fail_next: AtomicUsize,
    calls: AtomicUsize,
    error: BackendError,
}

#[async_trait]
impl BudgetLedger for FlakyLedger {
    async fn reserve(&self, p: &str, r: &Reservation, l: i64, now: DateTime<Utc>) -> BResult<ReserveOutcome> {
        if self.fail_next.load(Ordering::SeqCst) == usize::MAX {
            return Err(self.error.clone());
        }
        self.inner.reserve(p, r, l, now).await
    }
    async fn settle(&self, p: &str, c: &Charge) -> BResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(self.error.clone());
        }
        self.inner.settle(p, c).await
    }
    async fn release(&self, p: &str, id: &str) -> BResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(self.error.clone());
        }
        self.inner.release(p, id).await
    }
    async fn snapshot(&self, p: &str, now: DateTime<Utc>) -> BResult<LedgerSnapshot> {
        self.inner.snapshot(p, now).await
    }
    async fn declare(&self, p: &str, id: &str, bound: i64, expires_at: DateTime<Utc>) -> BResult<bool> {
        if self.fail_next.load(Ordering::SeqCst) == usize::MAX {
            return Err(self.error.clone());
        }
        self.inner.declare(p, id, bound, expires_at).await
    }
    async fn close(&self, p: &str, id: &str) -> BResult<Option<i64>> {
        self.inner.close(p, id).await
    }
    async fn lapsed(&self, p: &str, before: DateTime<Utc>) -> BResult<Vec<Reservation>> {
        self.inner.lapsed(p, before).await
    }
}

const TTL: Duration = Duration::from_secs(900);

#[tokio::test]
async fn reserve_settle_release_and_refusal_message() {
    let ledger = Arc::new(MemLedger::default());
    let b = Budget::new(ledger.clone(), 10_000, TTL);
    let now = Utc::now();
    let h1 = b.reserve("j1", "j1:1", 6_000, now).await.expect("fits");
    assert_eq!(h1.period, period(now));
    assert_eq!(h1.amount_micros(), 6_000);
    // Reserving the same id again does not hold twice.
    let again = b.reserve("j1", "j1:1", 6_000, now).await.expect("idempotent");
    assert_eq!(ledger.snapshot(&period(now), now).await.expect("snap").reserved_micros, 6_000);
    drop(again);

    let e = b.reserve("j2", "j2:1", 5_000, now).await.expect_err("6000 + 5000 > 10000");
    assert!(matches!(e, JobError::Budget { job_cap: false, .. }), "{e:?}");
    assert_eq!(e.disposition(), Disposition::Defer);
    // What was needed and what was left.
    assert!(e.message().contains("needed $0.005000"), "{e}");
    assert!(e.message().contains("$0.004000 left"), "{e}");

    b.settle(h1, 2_500, "gpt-5-nano", Some("acme")).await.expect("settled");
    let snap = b.snapshot(now).await.expect("snap");
    assert_eq!((snap.spent_micros, snap.reserved_micros), (2_500, 0));
    assert_eq!(snap.by_tenant.get("acme"), Some(&2_500));
    assert_eq!(snap.by_model.get("gpt-5-nano"), Some(&2_500));

    let h2 = b.reserve("j2", "j2:1", 5_000, now).await.expect("fits after settle");
    b.release(h2).await.expect("released");
    assert_eq!(b.snapshot(now).await.expect("snap").reserved_micros, 0);
    let h3 = b.reserve("j3", "j3:1", 7_500, now).await.expect("exactly the rest fits");
    b.settle(h3, 7_500, "gpt-5", None).await.expect("settled");
    assert_eq!(b.snapshot(now).await.expect("snap").spent_micros, 10_000);
    let e = b.reserve("j4", "j4:1", 1, now).await.expect_err("spent");
    assert!(e.message().contains("$0.000000 left"), "{e}");
}

#[tokio::test]
async fn a_call_larger_than_the_whole_budget_fails_instead_of_deferring_forever() {
    let b = Budget::new(Arc::new(MemLedger::default()), 10_000, TTL);
    let e = b.reserve("j", "j:1", 10_001, Utc::now()).await.expect_err("too big");
    assert!(matches!(e, JobError::Budget { job_cap: true, .. }), "{e:?}");
    // A zero budget (emergency stop) defers rather than fails.
    let b = Budget::new(Arc::new(MemLedger::default()), 0, TTL);
    let e = b.reserve("j", "j:1", 1, Utc::now()).await.expect_err("nothing to spend");
    assert!(matches!(e, JobError::Budget { job_cap: false, .. }), "{e:?}");
}

#[tokio::test]
async fn a_crashed_workers_lease_keeps_counting_so_the_ledger_never_under_counts() {
    let ledger = Arc::new(MemLedger::default());
    let crashed = Budget::new(ledger.clone(), 10_000, Duration::from_secs(60));
    let t0 = Utc::now();
    let lost = crashed.reserve("crashed", "crashed:1", 9_000, t0).await.expect("fits");
    // The worker dies mid-call: its lease is never returned.
    std::mem::forget(lost);
    std::mem::forget(crashed);
    let other = Budget::new(ledger.clone(), 10_000, Duration::from_secs(60));
    assert!(other.reserve("j", "j:1", 2_000, t0 + chrono::Duration::seconds(61)).await.is_err());
}

#[tokio::test]
async fn a_dead_workers_lease_is_recovered_at_its_declared_ceiling_and_the_rest_flows_back() {
    let ledger = Arc::new(MemLedger::default());
    let ttl = Duration::from_secs(2);
    let limit = 10_000_000;
    let now = Utc::now();
    let p = period(now);
    let dead = Budget::new(ledger.clone(), limit, ttl);
    let lost = dead.reserve("dead", "dead:1", 10_000, now).await.expect("fits");
    let lease = lost.lease_id().to_string();
    let leased = ledger.snapshot(&p, now).await.expect("snap").reserved_micros;
    assert!(leased >= 40_000, "a lease covers several calls: {leased}");
    // The worker dies mid-call: the call is never ended and the lease never returned.
    std::mem::forget(lost);
    drop(dead);

    // Another worker's maintenance task recovers the lease once it lapsed (ttl + ttl/4).
    let survivor = Budget::new(ledger.clone(), limit, ttl);
    let h = survivor.reserve("alive", "alive:1", 10_000, Utc::now()).await.expect("fits");
    survivor.settle(h, 1_000, "gpt-5-nano", None).await.expect("settle");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let snap = loop {
        let snap = ledger.snapshot(&p, Utc::now()).await.expect("snap");
        if snap.by_model.contains_key(atlas_codex::backend::RECOVERED_MODEL) || std::time::Instant::now() > deadline {
            break snap;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Declared before the call was sent: the call plus one step of the lease.
    let ceiling = (10_000 + leased / atlas_codex::budget::DECLARE_STEPS).min(leased);
    assert_eq!(snap.by_model.get(atlas_codex::backend::RECOVERED_MODEL), Some(&ceiling), "{snap:?}");
    assert_eq!(snap.lapsed_micros, 0, "nothing left lapsed: {snap:?}");
    assert!(snap.spent_micros >= 10_000, "never under the dead worker's call: {snap:?}");
    assert!(ledger.lapsed(&p, Utc::now()).await.expect("lapsed").iter().all(|r| r.id != lease), "settled");
    survivor.drain().await.expect("drain");
    let snap = ledger.snapshot(&p, Utc::now()).await.expect("snap");
    assert_eq!(snap.reserved_micros, 0, "{snap:?}");
    assert_eq!(snap.spent_micros, ceiling + 1_000, "the dead lease's unspent {} is back in the budget", leased - ceiling);
}

#[tokio::test]
async fn a_live_worker_whose_lease_was_recovered_moves_its_next_call_to_a_new_lease() {
    let ledger = Arc::new(MemLedger::default());
    let now = Utc::now();
    let p = period(now);
    let b = Budget::new(ledger.clone(), 1_000_000, TTL);
    let h1 = b.reserve("j", "j:1", 10_000, now).await.expect("fits");
    // Someone took the slow worker for dead and closed its lease's ceiling (at call + a step).
    let closed = ledger.close(&p, h1.lease_id()).await.expect("close").expect("declared before the call");
    assert!(closed >= 10_000, "the call in flight is covered: {closed}");
    let h2 = b.reserve("j", "j:2", 10_000, now).await.expect("fits in another lease");
    assert_ne!(h2.lease_id(), h1.lease_id(), "no call is sent past a closed ceiling");
    assert!(!ledger.declare(&p, h1.lease_id(), closed + 1, Utc::now()).await.expect("declare"));
    b.settle(h1, 4_000, "gpt-5", None).await.expect("settle");
    b.settle(h2, 4_000, "gpt-5", None).await.expect("settle");
    b.drain().await.expect("drain");
    let snap = ledger.snapshot(&p, now).await.expect("snap");
    assert_eq!((snap.spent_micros, snap.reserved_micros), (8_000, 0), "{snap:?}");
}

#[tokio::test]
async fn a_charge_above_the_calls_worst_case_is_declared_at_once() {
    let ledger = Arc::new(MemLedger::default());
    let now = Utc::now();
    let p = period(now);
    let b = Budget::new(ledger.clone(), 10_000_000, TTL);
    let h = b.reserve("j", "j:1", 10_000, now).await.expect("fits");
    let lease = h.lease_id().to_string();
    // The provider counted more input than the worker: 30,000 for a call of worst case 10,000.
    b.settle(h, 30_000, "gpt-5", None).await.expect("settle");
    // Were the worker to die now, the recovery charges at least what was spent.
    let ceiling = ledger.close(&p, &lease).await.expect("close").expect("declared");
    assert!(ceiling >= 30_000, "the ceiling covers the charge: {ceiling}");
}

/// A ledger whose ceiling declarations never answer.
struct StuckDeclare(MemLedger);

#[async_trait]
impl BudgetLedger for StuckDeclare {
    async fn reserve(&self, p: &str, r: &Reservation, l: i64, now: DateTime<Utc>) -> BResult<ReserveOutcome> {
        self.0.reserve(p, r, l, now).await
    }
    async fn settle(&self, p: &str, c: &Charge) -> BResult<()> {
        self.0.settle(p, c).await
    }
    async fn release(&self, p: &str, id: &str) -> BResult<()> {
        self.0.release(p, id).await
    }
    async fn snapshot(&self, p: &str, now: DateTime<Utc>) -> BResult<LedgerSnapshot> {
        self.0.snapshot(p, now).await
    }
    async fn declare(&self, _: &str, _: &str, _: i64, _: DateTime<Utc>) -> BResult<bool> {
        std::future::pending().await
    }
    async fn close(&self, p: &str, id: &str) -> BResult<Option<i64>> {
        self.0.close(p, id).await
    }
    async fn lapsed(&self, p: &str, before: DateTime<Utc>) -> BResult<Vec<Reservation>> {
        self.0.lapsed(p, before).await
    }
}

#[tokio::test]
async fn a_call_given_up_while_its_ceiling_is_declared_is_not_charged() {
    let ledger = Arc::new(StuckDeclare(MemLedger::default()));
    let b = Budget::new(ledger.clone(), 1_000_000, TTL);
    let now = Utc::now();
    let gave_up = tokio::time::timeout(Duration::from_millis(200), b.reserve("j", "j:1", 10_000, now)).await;
    assert!(gave_up.is_err(), "the declaration never answers");
    assert_eq!(b.estimated_calls(), 0, "an unsent call is not charged at its worst case");
    b.drain().await.expect("drain");
    let snap = ledger.snapshot(&period(now), now).await.expect("snap");
    assert_eq!((snap.spent_micros, snap.reserved_micros), (0, 0), "the lease went back without a charge: {snap:?}");
}

#[tokio::test]
async fn ledger_outages_are_transient_and_writes_are_retried() {
    let flaky = |fail: usize, error: BackendError| {
        Arc::new(FlakyLedger { inner: MemLedger::default(), fail_next: AtomicUsize::new(fail), calls: AtomicUsize::new(0), error })
    };
    let now = Utc::now();
    // Reserve while the ledger is down: transient, retried by the queue.
    let l = flaky(usize::MAX, BackendError::Transient("throttled".into()));
    let e = Budget::new(l, 10_000, TTL).reserve("j", "j:1", 1, now).await.expect_err("down");
    assert_eq!(e.disposition(), Disposition::Retry);
    assert_eq!(e.kind(), "budget_unavailable");

    // Two transient failures, then success: the charge lands once.
    let l = flaky(0, BackendError::Transient("throttled".into()));
    let b = Budget::new(l.clone(), 10_000, TTL);
    let h = b.reserve("j", "j:1", 5_000, now).await.expect("fits");
    l.fail_next.store(2, Ordering::SeqCst);
    b.settle(h, 4_000, "gpt-5", None).await.expect("third try works");
    assert_eq!(l.calls.load(Ordering::SeqCst), 3);
    assert_eq!(b.snapshot(now).await.expect("snap").spent_micros, 4_000);

    // Down for good: each return gives up after LEDGER_WRITE_TRIES and reports the error, and
    // the lease is kept and returned again later (drain keeps trying for DRAIN_RETURN_FOR).
    let h = b.reserve("j", "j:2", 1_000, now).await.expect("fits");
    l.calls.store(0, Ordering::SeqCst);
    l.fail_next.store(usize::MAX, Ordering::SeqCst);
    let _ = b.release(h).await; // the call ends in memory whatever the ledger says
    assert!(b.drain().await.is_err(), "returning the lease fails for good");
    let tries = l.calls.load(Ordering::SeqCst);
    assert!(tries > LEDGER_WRITE_TRIES as usize, "the kept lease was returned again: {tries} tries");
    // Once the ledger answers again, the kept lease goes back.
    l.fail_next.store(0, Ordering::SeqCst);
    b.drain().await.expect("returned once the ledger is back");
    assert_eq!(b.snapshot(now).await.expect("snap").reserved_micros, 0, "nothing left held");

    // A non-retryable error is not retried.
    let l = flaky(0, BackendError::Other("access denied".into()));
    let b = Budget::new(l.clone(), 10_000, TTL);
    let h = b.reserve("j", "j:1", 5_000, now).await.expect("fits");
    l.fail_next.store(1, Ordering::SeqCst);
    assert!(b.settle(h, 1, "gpt-5", None).await.is_err());
    assert_eq!(l.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn used_fraction_is_cached_for_a_second() {
    let ledger = Arc::new(MemLedger::default());
    let b = Budget::new(ledger.clone(), 10_000, TTL);
    let now = Utc::now();
    assert_eq!(b.used_fraction(now).await, 0.0);
    let h = b.reserve("j", "j:1", 2_500, now).await.expect("fits");
    assert_eq!(b.used_fraction(now).await, 0.0, "served from the cache");
    tokio::time::advance(Duration::from_millis(1_100)).await;
    assert_eq!(b.used_fraction(now).await, 0.25, "holds count as used");
    b.settle(h, 5_000, "gpt-5", None).await.expect("settle");
    tokio::time::advance(Duration::from_millis(1_100)).await;
    assert_eq!(b.used_fraction(now).await, 0.5);
    let zero = Budget::new(ledger, 0, TTL);
    assert_eq!(zero.used_fraction(now).await, 1.0);
}

#[test]
fn job_cap_refuses_the_call_that_would_pass_it() {
    // max_cost_usd 0.05 = 50_000 µUSD.
    assert!(check_job_cap(Some(0.05), 30_000, 20_000).is_ok());
    let e = check_job_cap(Some(0.05), 30_000, 20_001).expect_err("over");
    assert_eq!(e.kind(), "job_cost_cap");
    // Failed and recorded, never deferred (it can never fit) and never dead-lettered (budget).
    assert_eq!(e.disposition(), Disposition::Fail);
    assert!(check_job_cap(None, i64::MAX, i64::MAX).is_ok());
}

/// What the fleet run saw.
struct FleetReport {
    granted: usize,
    refused: usize,
    released: usize,
    settled_sum: i64,
    snapshots: usize,
    final_snapshot: LedgerSnapshot,
}

/// `workers` tasks share the ledgers (worker k uses `ledgers[k % n]`) and work through `jobs`
/// jobs of random cost: reserve the worst case, then settle an actual cost ≤ the worst case or
/// (one in ten) release. A monitor snapshots the ledger throughout and checks the limit.
async fn run_fleet(ledgers: Vec<Arc<dyn BudgetLedger>>, limit: i64, workers: usize, jobs: usize) -> FleetReport {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let plan: Arc<Vec<(i64, i64, bool)>> = Arc::new(
        (0..jobs)
            .map(|_| {
                let worst: i64 = rng.random_range(200..=3_000);
                let actual = worst * rng.random_range(50..=100) / 100;
                (worst, actual, rng.random_bool(0.1))
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let ledger = ledgers[0].clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            let mut violations = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let now = Utc::now();
                if let Ok(s) = ledger.snapshot(&period(now), now).await {
                    n += 1;
                    if s.spent_micros > limit || s.spent_micros + s.reserved_micros > limit {
                        violations.push((s.spent_micros, s.reserved_micros));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (n, violations)
        })
    };
    let mut tasks = Vec::new();
    for k in 0..workers {
        let budget = Budget::new(ledgers[k % ledgers.len()].clone(), limit, TTL);
        let (plan, next) = (plan.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut granted, mut refused, mut released, mut settled) = (0usize, 0usize, 0usize, 0i64);
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(worst, actual, release)) = plan.get(i) else {
                    break;
                };
                let job_id = format!("job{i}");
                // Like the worker's deferral: while the budget is only leased elsewhere (not
                // spent), try again shortly; leases flow back as other workers go idle.
                let mut tries = 0;
                let reserved = loop {
                    let r = budget.reserve(&job_id, &format!("{job_id}:1"), worst, Utc::now()).await;
                    match r {
                        Err(JobError::Budget { job_cap: false, retry_after: Some(_), .. }) if tries < 400 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        other => break other,
                    }
                };
                match reserved {
                    Ok(hold) => {
                        granted += 1;
                        // The "model call".
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        if release {
                            budget.release(hold).await.expect("release");
                            released += 1;
                        } else {
                            let tenant = if i % 3 == 0 { Some("acme") } else { None };
                            let model = if i % 2 == 0 { "gpt-5-nano" } else { "gpt-5-mini" };
                            budget.settle(hold, actual, model, tenant).await.expect("settle");
                            settled += actual;
                        }
                    }
                    Err(JobError::Budget { job_cap: false, .. }) => refused += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            // A worker that stops gives its unused leases back.
            budget.drain().await.expect("drain");
            (granted, refused, released, settled)
        }));
    }
    let mut report =
        FleetReport { granted: 0, refused: 0, released: 0, settled_sum: 0, snapshots: 0, final_snapshot: LedgerSnapshot::default() };
    for t in tasks {
        let (g, r, rel, s) = t.await.expect("worker");
        report.granted += g;
        report.refused += r;
        report.released += rel;
        report.settled_sum += s;
    }
    done.store(true, Ordering::SeqCst);
    let (snapshots, violations) = monitor.await.expect("monitor");
    assert!(violations.is_empty(), "limit {limit} passed at some moment: {violations:?}");
    report.snapshots = snapshots;
    let now = Utc::now();
    report.final_snapshot = ledgers[0].snapshot(&period(now), now).await.expect("final snapshot");
    report
}

fn check_fleet(r: &FleetReport, limit: i64, jobs: usize) {
    let s = &r.final_snapshot;
    assert_eq!(r.granted + r.refused, jobs);
    assert!(r.refused > 0, "the budget must bind in this run");
    assert!(r.released > 0);
    assert!(r.snapshots >= 5, "the monitor must have looked during the run ({})", r.snapshots);
    assert!(s.spent_micros <= limit, "spent {} > limit {limit}", s.spent_micros);
    assert_eq!(s.reserved_micros, 0, "every hold was settled or released");
    assert_eq!(s.spent_micros, r.settled_sum, "ledger spend equals what the workers settled");
    assert_eq!(s.by_model.values().sum::<i64>(), s.spent_micros);
    assert_eq!(s.by_tenant.values().sum::<i64>(), s.spent_micros);
    assert!(
        // Leases held by other workers make a few late calls wait; the worker defers those
        // for seconds, this harness drops them.
        s.spent_micros as f64 >= 0.90 * limit as f64,
        "only {} of {limit} used before jobs were refused",
        s.spent_micros
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_never_overspends_in_memory_ledger() {
    let (limit, jobs) = (1_000_000, 2_000);
    let r = run_fleet(vec![Arc::new(MemLedger::default())], limit, 8, jobs).await;
    check_fleet(&r, limit, jobs);
}

/// The headline: 8 workers, two separate handles (two connections and threads, as two worker
/// processes would have) on ONE embedded SQLite ledger file, 2,000 jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_never_overspends_sqlite_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions::from_settings(&Settings::default());
    let a = LocalBackend::open(dir.path(), "atlas-cost.sqlite", opts.clone()).expect("open a");
    let b = LocalBackend::open(dir.path(), "atlas-cost.sqlite", opts).expect("open b");
    let (limit, jobs) = (1_000_000, 2_000);
    let r = run_fleet(vec![a.ledger.clone(), b.ledger.clone()], limit, 8, jobs).await;
    check_fleet(&r, limit, jobs);
}

// ------------------------------------------------------------------------------------------------
// Rate limits

fn limited(model: &str, rpm: u32, tpm: u32) -> BTreeMap<String, ModelSettings> {
    let mut s = Settings::default();
    let m = s.models.get_mut(model).expect("model in the default table");
    m.rpm = rpm;
    m.tpm = tpm;
    s.models
}

/// Largest count (or token sum) in any window `[t, t + 60 s)` starting at an event.
fn max_per_window(events: &[(tokio::time::Instant, u64)]) -> u64 {
    let mut ev = events.to_vec();
    ev.sort_by_key(|e| e.0);
    let mut best = 0;
    for (i, (t, _)) in ev.iter().enumerate() {
        let sum: u64 = ev[i..].iter().take_while(|(u, _)| *u < *t + Duration::from_secs(60)).map(|e| e.1).sum();
        best = best.max(sum);
    }
    best
}

/// `workers` tasks acquire `tokens` per request for `run` of (paused) time; returns the events.
async fn hammer(
    rl: Arc<RateLimits>,
    model: &'static str,
    workers: usize,
    tokens: fn(usize) -> u32,
    run: Duration,
) -> Vec<(tokio::time::Instant, u64)> {
    let start = tokio::time::Instant::now();
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (rl, events) = (rl.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while start.elapsed() < run {
                let n = tokens(i);
                rl.acquire(model, n).await;
                let at = tokio::time::Instant::now();
                if at.duration_since(start) < run {
                    events.lock().expect("events").push((at, u64::from(n)));
                }
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let v = events.lock().expect("events").clone();
    v
}

#[tokio::test(start_paused = true)]
async fn rpm_limit_is_reached_and_never_exceeded_in_any_minute() {
    let rl = Arc::new(RateLimits::new(&limited("gpt-5-nano", 120, 0), 10_000));
    let events = hammer(rl, "gpt-5-nano", 8, |_| 1, Duration::from_secs(180)).await;
    let per_window = max_per_window(&events);
    assert!(per_window <= 120, "{per_window} requests in one minute");
    // Over three minutes at 120/min: at least 90% of 360.
    assert!(events.len() as f64 >= 0.9 * 360.0, "only {} requests in 3 minutes", events.len());
    assert!(per_window >= 108, "a busy minute reaches 90% of the limit ({per_window})");
}

#[tokio::test(start_paused = true)]
async fn tpm_limit_is_reached_and_never_exceeded_in_any_minute() {
    // 60k tokens/min, requests of 500..5000 reserved tokens; largest request 5000 sizes the burst.
    let rl = Arc::new(RateLimits::new(&limited("gpt-4o", 0, 60_000), 5_000));
    assert_eq!(rl.token_burst("gpt-4o"), Some(5_000));
    let events = hammer(rl, "gpt-4o", 8, |i| 500 + (i as u32 * 977) % 4_500, Duration::from_secs(300)).await;
    let per_window = max_per_window(&events);
    assert!(per_window <= 60_000, "{per_window} tokens in one minute");
    let total: u64 = events.iter().map(|e| e.1).sum();
    assert!(total as f64 >= 0.9 * 5.0 * 60_000.0, "only {total} tokens in 5 minutes");
}

#[tokio::test(start_paused = true)]
async fn oversize_requests_do_not_deadlock() {
    let rl = RateLimits::new(&limited("gpt-4o", 0, 60_000), 5_000);
    for _ in 0..5 {
        let w = tokio::time::timeout(Duration::from_secs(30), rl.acquire("gpt-4o", 1_000_000)).await;
        assert!(w.is_ok(), "a request above the burst must still go");
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_every_caller_for_the_retry_after() {
    let rl = Arc::new(RateLimits::new(&limited("gpt-5", 600, 0), 10_000));
    rl.acquire("gpt-5", 100).await;
    let t0 = tokio::time::Instant::now();
    assert_eq!(rl.on_rate_limited("gpt-5", Some(Duration::from_secs(7))), Duration::from_secs(7));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let rl = rl.clone();
        tasks.push(tokio::spawn(async move {
            let waited = rl.acquire("gpt-5", 100).await.waited;
            (waited, tokio::time::Instant::now())
        }));
    }
    for t in tasks {
        let (waited, at) = t.await.expect("task");
        assert!(waited >= Duration::from_secs(7), "waited only {waited:?}");
        assert!(at >= t0 + Duration::from_secs(7));
        // After the pause the RPM spacing (100 ms at 600/min) is all that separates them.
        assert!(at <= t0 + Duration::from_millis(7_500), "{:?}", at - t0);
    }
    // Other models are not paused.
    assert_eq!(rl.acquire("gpt-5-mini", 100).await.waited, Duration::ZERO);
    // A later, shorter Retry-After does not cut an existing pause short.
    rl.on_rate_limited("gpt-5", Some(Duration::from_secs(10)));
    rl.on_rate_limited("gpt-5", Some(Duration::from_secs(1)));
    let w = rl.acquire("gpt-5", 1).await.waited;
    assert!(w >= Duration::from_secs(10), "{w:?}");
    rl.on_success("gpt-5");
}

#[tokio::test]
async fn limits_hold_in_real_time_too() {
    // governor runs on the tokio clock; without a paused clock that is the real one.
    // 6000/min = one every 10 ms: in 300 ms at most 30 (+1 at the start).
    let rl = RateLimits::new(&limited("gpt-5-mini", 6_000, 0), 10_000);
    let start = tokio::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(300) {
        rl.acquire("gpt-5-mini", 1).await;
        n += 1;
    }
    assert!(n <= 32, "{n} requests in 300 ms at 100/s");
    assert!(n >= 10, "only {n} requests in 300 ms at 100/s");
}
