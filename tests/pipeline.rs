//! The whole pipeline through the worker with real HTTP on loopback: fixture pages in, the
//! OpenAI-compatible mock as the model, results and records out. Also the provider's rate limits
//! as the worker meets them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use atlas_codex::app::App;
use atlas_codex::job::JobStatus;
use atlas_codex::llm::openai::OpenAiClient;
use atlas_codex::llm::LlmClient;
use atlas_codex::mock_openai::{Behavior, MockConfig, MockOpenAi, RetryHint};
use atlas_codex::settings::Secret;
use serde_json::{json, Value};
use support::app::{spawn_app, test_settings, text_job, TestApp};
use support::pages::PageServer;

fn client(mock: &MockOpenAi) -> Arc<dyn LlmClient> {
    Arc::new(OpenAiClient::new(&mock.base_url(), &Secret::new("sk-pipeline-key"), Duration::from_secs(20)).unwrap())
}

async fn result_doc(t: &TestApp, id: &str) -> Value {
    let rec = t.record(id).await;
    let key = rec.result_key.unwrap_or_else(|| panic!("{id} has no result"));
    let bytes = t.backends.artifacts.get(&key).await.unwrap().expect("result object");
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_fetched_cleaned_extracted_validated_and_stored() {
    let pages = PageServer::start().await;
    let mock = MockOpenAi::start(MockConfig::default()).await;
    let t = spawn_app(&[], client(&mock)).await;
    let schema = json!({"type": "object", "properties": {"headline": {"type": "string"}, "sources": {"type": "array", "items": {"type": "string"}}}, "required": ["headline"]});
    t.send(&[
        json!({"job_id": "x-article", "url": pages.url("/article.html"), "instructions": "Extract the headline and the data sources.", "schema": schema, "formats": ["markdown", "links", "metadata"], "tenant": "acme"}).to_string(),
        json!({"job_id": "x-pageonly", "url": pages.url("/article.html")}).to_string(),
    ])
    .await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.completed, 2, "{stats:?}");

    // The model got cleaned Markdown (no raw HTML, no nav/header), with a strict schema.
    let reqs = mock.handle().requests();
    assert_eq!(reqs.len(), 1, "only the job with instructions called the model");
    let body = &reqs[0].body;
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    let user = body["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap_or("").to_string()).collect::<String>();
    assert!(!user.contains("<p>") && !user.contains("NAV_MARKER") && !user.contains("SITE_HEADER_MARKER"), "cleaned content only");
    assert!(user.contains("Tidal"), "the article text reached the model");

    // Record: usage from the response, cost from the price table, route, data inline.
    let rec = t.record("x-article").await;
    assert_eq!(rec.status, JobStatus::Completed);
    assert!(rec.usage.input_tokens > 0 && rec.usage.output_tokens > 0);
    assert_eq!(rec.calls.len(), 1);
    assert_eq!(rec.calls[0].usage, rec.usage);
    let model = rec.model.clone().unwrap();
    let price = t.app.settings.models.get(&model).unwrap();
    assert_eq!(rec.cost_micros, atlas_codex::pricing::cost_micros(&rec.usage, price));
    let route = rec.route.clone().unwrap();
    assert_eq!(route.model, model);
    assert!(!route.reason.is_empty());
    let data = rec.data.clone().unwrap();
    assert!(data["headline"].is_string(), "{data}");
    assert_eq!(rec.tenant.as_deref(), Some("acme"));

    // Result document.
    let doc = result_doc(&t, "x-article").await;
    for k in ["job_id", "stage", "type", "url", "data", "metadata", "markdown", "links", "model", "route", "usage", "cost_usd", "timings"] {
        assert!(doc.get(k).is_some(), "result lacks `{k}`: {doc}");
    }
    assert!(doc["simulated"].is_null(), "a real provider's result is not marked simulated");
    assert!(doc["metadata"]["title"].as_str().unwrap().contains("Tidal Energy Report"));
    assert!(doc["links"].as_array().unwrap().iter().any(|l| l == "https://data.example.org/tidal.csv"));

    // The no-model path spends nothing.
    let po = t.record("x-pageonly").await;
    assert_eq!((po.cost_micros, po.calls.len(), po.model.clone()), (0, 0, None));
    let podoc = result_doc(&t, "x-pageonly").await;
    assert!(podoc["markdown"].as_str().unwrap().contains("Tidal"));
    assert!(podoc["data"].is_null());
    let now = chrono::Utc::now();
    let snap = t.backends.ledger.snapshot(&atlas_codex::budget::period(now), now).await.unwrap();
    assert_eq!(snap.spent_micros, rec.cost_micros, "the ledger holds exactly the one call");
    assert_eq!(snap.by_tenant.get("acme"), Some(&rec.cost_micros));
    // The API key never lands in records or results.
    let all = format!("{:?}{}{}", t.backends.jobs.list(None, 10).await.unwrap(), doc, podoc);
    assert!(!all.contains("sk-pipeline-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawl_job_stays_in_scope_and_returns_pages_and_an_aggregate() {
    let pages = PageServer::start().await;
    let mock = MockOpenAi::start(MockConfig::default()).await;
    let t = spawn_app(&[], client(&mock)).await;
    let schema =
        json!({"type": "object", "properties": {"titles": {"type": "array", "items": {"type": "string"}}}, "required": ["titles"]});
    t.send(&[json!({"job_id": "c-1", "type": "crawl", "url": pages.url("/site/"), "max_pages": 4, "max_depth": 1, "instructions": "List page titles", "schema": schema}).to_string()]).await;
    t.run_until_idle().await;
    let rec = t.record("c-1").await;
    assert_eq!(rec.status, JobStatus::Completed, "{:?}", rec.error);
    let doc = result_doc(&t, "c-1").await;
    let pages_out = doc["pages"].as_array().unwrap();
    assert!(!pages_out.is_empty() && pages_out.len() <= 4, "{}", pages_out.len());
    for p in pages_out {
        let u = p["url"].as_str().unwrap();
        assert!(u.starts_with(&pages.url("/site/")), "in scope: {u}");
        assert!(!u.contains("private/secret"), "robots.txt respected: {u}");
        assert!(p["depth"].as_u64().unwrap() <= 1);
    }
    assert!(doc["data"]["titles"].is_array(), "aggregate: {}", doc["data"]);
    assert_eq!(mock.handle().total_requests(), 1, "one model call over all pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_to_the_providers_rpm_the_worker_gets_no_429_and_reaches_90_percent() {
    const RPM: u32 = 120;
    let mock =
        MockOpenAi::start(MockConfig { behavior: Behavior { rpm_limit: Some(RPM), ..Behavior::default() }, ..MockConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(dir.path(), &[("ATLAS__WORKER__CONCURRENCY", "32")]);
    for m in s.models.values_mut() {
        m.rpm = RPM;
    }
    // One process on the key: its own evenly spaced limiter (the fleet's shared windows are
    // burstier within a minute; tests/fleet_ratelimit.rs covers them).
    s.rate_limit.scope = atlas_codex::settings::RateScope::Process;
    let backends = atlas_codex::app::open_backends(&s).await.unwrap();
    let app = App::new(Arc::new(s), backends.clone(), client(&mock), "mock".into()).unwrap();
    let t = TestApp { dir, app: Arc::new(app), backends };
    let n = 30;
    t.send(&(0..n).map(|i| text_job(&format!("r-{i}"))).collect::<Vec<_>>()).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.completed, n as u64, "{stats:?}");
    let reqs = mock.handle().requests();
    let limited = reqs.iter().filter(|r| r.status == 429).count();
    assert_eq!(limited, 0, "no 429 when configured to the provider's limit");
    let mut at: Vec<Duration> = reqs.iter().map(|r| r.since_start).collect();
    at.sort();
    let span = (*at.last().unwrap() - at[0]).as_secs_f64();
    let rate_per_min = (at.len() - 1) as f64 / span * 60.0;
    assert!(rate_per_min >= 0.9 * RPM as f64, "reached {rate_per_min:.1}/min of {RPM}");
    assert!(rate_per_min <= RPM as f64 * 1.05, "never above the limit: {rate_per_min:.1}/min");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_429s_slows_the_worker_and_every_job_still_completes() {
    let mock = MockOpenAi::start(MockConfig::default()).await;
    mock.handle().rate_limit_next(12, RetryHint::Seconds(1));
    let t = spawn_app(&[("ATLAS__WORKER__CONCURRENCY", "8")], client(&mock)).await;
    let n = 10;
    t.send(&(0..n).map(|i| text_job(&format!("b-{i}"))).collect::<Vec<_>>()).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.completed, n as u64, "a 429 alone never fails a job: {stats:?}");
    assert_eq!(stats.retried + stats.failed, 0, "{stats:?}");
    let reqs = mock.handle().requests();
    let limited: Vec<_> = reqs.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 12);
    // After the first 429 (Retry-After: 1 s) nothing was sent for about a second.
    let first = limited.iter().map(|r| r.since_start).min().unwrap();
    let next_ok = reqs.iter().filter(|r| r.status == 200 && r.since_start > first).map(|r| r.since_start).min().unwrap();
    assert!(next_ok - first >= Duration::from_millis(900), "slowed down: next success {:?} after the first 429", next_ok - first);
    for i in 0..n {
        let r = t.record(&format!("b-{i}")).await;
        assert_eq!(r.status, JobStatus::Completed);
        assert_eq!(r.cost_micros, r.calls.iter().map(|c| c.cost_micros).sum::<i64>(), "429s are not charged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_headers_reach_the_page_filtered_and_are_never_stored() {
    let pages = PageServer::start().await;
    let mock = MockOpenAi::start(MockConfig::default()).await;
    let t = spawn_app(&[], client(&mock)).await;
    let headers = json!({"Accept-Language": "de-CH", "X-Site-Token": "tok-123", "Cookie": "session=s3cret", "Host": "evil.example", "Connection": "close"});
    t.send(&[json!({"job_id": "hdr-1", "url": pages.url("/headers"), "headers": headers}).to_string()]).await;
    t.run_until_idle().await;
    let doc = result_doc(&t, "hdr-1").await;
    let seen = doc["markdown"].as_str().unwrap().to_ascii_lowercase();
    assert!(seen.contains("accept-language: de-ch") && seen.contains("x-site-token: tok-123"), "{seen}");
    assert!(!seen.contains("s3cret"), "cookies are dropped unless configured: {seen}");
    assert!(!seen.contains("evil.example"), "Host is not the caller's to set: {seen}");
    let rec = format!("{:?}", t.record("hdr-1").await);
    assert!(!rec.contains("tok-123") && !rec.contains("s3cret"), "headers are not stored on the record");
}

fn headings_schema() -> Value {
    json!({"type": "object", "properties": {"headings": {"type": "array", "items": {"type": "string"}}}, "required": ["headings"]})
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// Every call on the record belongs to a chunk, every chunk has a charged call, and the calls'
/// costs add up to the job's.
fn assert_chunk_costs(rec: &atlas_codex::job::JobRecord) -> u32 {
    let chunks = rec.chunks.expect("a chunked job records its chunk count");
    assert!(chunks > 1, "{chunks} chunk(s)");
    for n in 1..=chunks {
        let calls: Vec<_> = rec.calls.iter().filter(|c| c.chunk == Some(n)).collect();
        assert!(!calls.is_empty(), "chunk {n} has no call on the record");
        assert!(calls.iter().all(|c| c.cost_micros > 0 && c.settled), "chunk {n}: every call charged and settled: {calls:?}");
    }
    assert!(rec.calls.iter().all(|c| c.chunk.is_some_and(|n| (1..=chunks).contains(&n))));
    assert_eq!(rec.calls.iter().map(|c| c.cost_micros).sum::<i64>(), rec.cost_micros);
    chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_page_crawl_beyond_the_input_budget_is_read_page_by_page_and_the_result_is_built_from_all_60_pages() {
    let pages = PageServer::start().await;
    let mock = MockOpenAi::start(MockConfig::default()).await;
    let t = spawn_app(&[], client(&mock)).await;
    t.send(&[json!({"job_id": "lib", "type": "crawl", "url": pages.url("/library/"), "max_pages": support::pages::LIBRARY_PAGES,
        "max_depth": 1, "instructions": "List every book title.", "schema": headings_schema()})
    .to_string()])
        .await;
    t.run_until_idle().await;
    let rec = t.record("lib").await;
    assert_eq!(rec.status, JobStatus::Completed, "{:?}", rec.error);
    let doc = result_doc(&t, "lib").await;
    let crawled: Vec<String> = doc["pages"].as_array().unwrap().iter().map(|p| p["url"].as_str().unwrap().to_string()).collect();
    assert_eq!(crawled.len(), support::pages::LIBRARY_PAGES as usize);
    assert!(doc["truncated"].is_null(), "nothing was cut");

    // The merged answer holds what every chunk's answer read: all 60 pages, each book's title.
    let headings = strings(&doc["data"]["headings"]);
    for url in &crawled {
        assert!(headings.iter().any(|h| h == &format!("Page: {url}")), "{url} reached no answer: {headings:?}");
    }
    for n in 1..support::pages::LIBRARY_PAGES {
        assert!(headings.contains(&format!("Book {n}")), "Book {n} missing");
    }
    let chunks = assert_chunk_costs(&rec);
    println!(
        "crawl of {} pages: {chunks} chunks, {} calls, {} input tokens, {} micro-USD",
        crawled.len(),
        rec.calls.len(),
        rec.usage.input_tokens,
        rec.cost_micros
    );
    let reqs = mock.handle().requests();
    assert_eq!(reqs.len(), chunks as usize, "one call per chunk");
    let budget = t.app.settings.llm.max_input_tokens;
    for r in &reqs {
        let user: String = r.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].as_str().unwrap_or(""))
            .collect();
        let content_tokens = atlas_codex::page::count_tokens(&user);
        assert!(content_tokens <= budget + 200, "a call read {content_tokens} tokens, over the {budget}-token budget");
    }
    let now = chrono::Utc::now();
    let snap = t.backends.ledger.snapshot(&atlas_codex::budget::period(now), now).await.unwrap();
    assert_eq!(snap.spent_micros, rec.cost_micros, "the ledger holds every chunk's charge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_fails_part_way_through_a_chunked_input_is_resumed_without_paying_for_the_chunks_read() {
    let pages = PageServer::start().await;
    let mock = MockOpenAi::start(MockConfig::default()).await;
    mock.set_latency(Duration::from_millis(150));
    let t = spawn_app(&[("worker.retry_base_secs", "1")], client(&mock)).await;
    t.send(&[json!({"job_id": "resume", "url": pages.url("/long-article.html"), "instructions": "List the sections.",
                    "schema": headings_schema(), "max_cost_usd": 1.0})
    .to_string()])
        .await;
    // After two chunks' answers the provider fails every call (the attempt ends transient),
    // then recovers for the retry.
    let handle = mock.handle();
    let faults = tokio::spawn(async move {
        while handle.total_requests() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.set_failure_probability(1.0);
        while handle.counts().iter().filter(|((_, status), _)| *status == 500).map(|(_, n)| *n).sum::<u64>() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.set_failure_probability(0.0);
    });
    t.run_until_idle().await;
    faults.await.unwrap();
    let rec = t.record("resume").await;
    assert_eq!(rec.status, JobStatus::Completed, "{:?}", rec.error);
    assert!(rec.attempts >= 2, "the first attempt failed part-way: {} attempt(s)", rec.attempts);
    let chunks = rec.chunks.expect("chunked");
    assert!(chunks >= 3, "{chunks}");
    // Chunks 1 and 2 were answered once, in the first attempt, and not asked again; every
    // chunk has exactly one answered, charged call; the failed calls (5xx) cost nothing.
    for n in [1, 2] {
        let calls: Vec<_> = rec.calls.iter().filter(|c| c.chunk == Some(n)).collect();
        assert_eq!(calls.len(), 1, "chunk {n} paid once: {calls:?}");
    }
    for n in 1..=chunks {
        let ok: Vec<_> = rec.calls.iter().filter(|c| c.chunk == Some(n) && c.outcome == "ok").collect();
        assert_eq!(ok.len(), 1, "chunk {n}: {:?}", rec.calls);
        assert!(ok[0].cost_micros > 0 && ok[0].settled);
    }
    assert!(rec.calls.iter().any(|c| c.outcome == "server_error"), "the fault hit a call: {:?}", rec.calls);
    assert_eq!(rec.calls.iter().map(|c| c.cost_micros).sum::<i64>(), rec.cost_micros);
    assert!(rec.chunk_progress.is_none(), "cleared once merged");
    let headings = strings(&rec.data.clone().unwrap()["headings"]);
    for i in 1..=support::pages::LONG_ARTICLE_SECTIONS {
        assert!(headings.contains(&format!("Section {i}")), "Section {i} missing: {headings:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kb_article_is_extracted_in_chunks_with_every_chunks_cost_on_the_record() {
    atlas_codex::telemetry::install_metrics("pipeline");
    let pages = PageServer::start().await;
    assert!(support::pages::long_article().len() >= 200 * 1024);
    let mock = MockOpenAi::start(MockConfig::default()).await;
    let t = spawn_app(&[], client(&mock)).await;
    t.send(&[
        json!({"job_id": "long", "url": pages.url("/long-article.html"), "instructions": "List the sections.", "schema": headings_schema(), "max_cost_usd": 1.0}).to_string(),
        json!({"job_id": "cut", "url": pages.url("/long-article.html"), "instructions": "List the sections.", "schema": headings_schema(), "truncate": true}).to_string(),
    ])
    .await;
    t.run_until_idle().await;
    let rec = t.record("long").await;
    assert_eq!(rec.status, JobStatus::Completed, "{:?}", rec.error);
    let chunks = assert_chunk_costs(&rec);
    assert!(chunks >= 3, "{chunks}");
    println!(
        "200 KB article: {chunks} chunks, {} calls, {} input tokens, {} micro-USD",
        rec.calls.len(),
        rec.usage.input_tokens,
        rec.cost_micros
    );
    let headings = strings(&rec.data.clone().unwrap()["headings"]);
    for i in 1..=support::pages::LONG_ARTICLE_SECTIONS {
        assert!(headings.contains(&format!("Section {i}")), "Section {i} missing: {headings:?}");
    }
    assert_eq!(headings.iter().filter(|h| *h == "Annual report").count(), 1, "merged without repeats");
    assert!(result_doc(&t, "long").await["truncated"].is_null());
    // Counted: one chunked input (the truncated job is not), in `chunks` parts.
    let metrics = atlas_codex::telemetry::render_metrics();
    let value = |name: &str| {
        metrics.lines().find(|l| l.starts_with(name) && !l.starts_with('#')).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(value(atlas_codex::telemetry::names::LLM_CHUNKED_INPUTS_TOTAL), Some(1.0), "{metrics}");
    assert_eq!(value(atlas_codex::telemetry::names::LLM_INPUT_CHUNKS_TOTAL), Some(f64::from(chunks)));

    // Asked to truncate: one call, the start only, said so.
    let cut = t.record("cut").await;
    assert_eq!(cut.status, JobStatus::Completed, "{:?}", cut.error);
    assert_eq!((cut.chunks, cut.calls.len()), (None, 1));
    assert_eq!(result_doc(&t, "cut").await["truncated"], true);
    let cut_headings = strings(&cut.data.clone().unwrap()["headings"]);
    assert!(cut_headings.len() < headings.len(), "a truncated read sees fewer sections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_needing_more_than_max_chunks_fails_before_any_call() {
    let pages = PageServer::start().await;
    let mock = MockOpenAi::start(MockConfig::default()).await;
    let t = spawn_app(&[("ATLAS__LLM__MAX_CHUNKS", "2")], client(&mock)).await;
    t.send(&[json!({"job_id": "toolong", "url": pages.url("/long-article.html"), "instructions": "List the sections.", "schema": headings_schema()}).to_string()]).await;
    t.run_until_idle().await;
    let rec = t.record("toolong").await;
    assert_eq!(rec.status, JobStatus::Failed);
    let err = rec.error.clone().unwrap();
    assert_eq!(err.kind, "input_too_long", "{err:?}");
    assert!(err.message.contains("truncate"), "the error says how to proceed: {}", err.message);
    assert_eq!((rec.calls.len(), rec.cost_micros, mock.handle().total_requests()), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_together_stay_inside_the_jobs_max_cost_usd() {
    let pages = PageServer::start().await;
    let mock = MockOpenAi::start(MockConfig::default()).await;
    let t = spawn_app(&[], client(&mock)).await;
    // Room for the worst cases of some of the article's five chunks, not all.
    let cap_usd = 0.012;
    t.send(&[json!({"job_id": "capped", "url": pages.url("/long-article.html"), "instructions": "List the sections.", "schema": headings_schema(), "max_cost_usd": cap_usd}).to_string()]).await;
    t.run_until_idle().await;
    let rec = t.record("capped").await;
    assert_eq!(rec.status, JobStatus::Failed);
    assert_eq!(rec.error.clone().unwrap().kind, "job_cost_cap", "{:?}", rec.error);
    assert!(rec.chunks.unwrap() >= 3);
    assert!(!rec.calls.is_empty(), "the chunks that fit were read");
    assert!(rec.calls.len() < rec.chunks.unwrap() as usize, "not every chunk: {} calls", rec.calls.len());
    assert!(rec.cost_micros as f64 <= cap_usd * 1e6, "{} micro-USD spent over a {cap_usd} USD cap", rec.cost_micros);
    assert_eq!(rec.calls.iter().map(|c| c.cost_micros).sum::<i64>(), rec.cost_micros, "every call charged on the record");
    assert_eq!(mock.handle().total_requests(), rec.calls.len() as u64);
}
