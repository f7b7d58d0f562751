//! After a run, the exported counters agree with the job records, and a live scrape of the real
//! worker binary passes `promtool check metrics`.

mod support;

use std::time::Duration;

use atlas_codex::job::JobStatus;
use support::app::{spawn_app, text_job, ScriptedLlm};
use support::metrics::{metric_value, sum_metric};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_what_the_job_records_say() {
    atlas_codex::telemetry::install_metrics("local");
    // One in five calls fails with a 500 first, so retries show up too.
    let llm = ScriptedLlm::new(Duration::from_millis(2), 7, false);
    let t = spawn_app(&[("ATLAS__WORKER__RETRY_BASE_SECS", "1")], llm.clone()).await;
    let n = 40;
    let bodies: Vec<String> = (0..n).map(|i| text_job(&format!("m-{i}"))).collect();
    t.send(&bodies).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.completed, n as u64, "{stats:?}");

    let recs = t.backends.jobs.list(Some(JobStatus::Completed), 1000).await.unwrap();
    assert_eq!(recs.len(), n);
    let text = atlas_codex::telemetry::render_metrics();
    assert_eq!(metric_value(&text, "atlas_jobs_total", &[("outcome", "completed"), ("reason", "ok")]), n as f64);
    assert_eq!(sum_metric(&text, "atlas_jobs_total", &[("outcome", "retried")]), stats.retried as f64);
    let tokens = |kind: &str| sum_metric(&text, "atlas_llm_tokens_total", &[("kind", kind)]);
    let sum = |f: &dyn Fn(&atlas_codex::job::JobRecord) -> u64| recs.iter().map(f).sum::<u64>() as f64;
    assert_eq!(tokens("input"), sum(&|r| r.usage.input_tokens));
    assert_eq!(tokens("output"), sum(&|r| r.usage.output_tokens));
    assert_eq!(tokens("reasoning"), sum(&|r| r.usage.reasoning_tokens));
    assert_eq!(tokens("cached_input"), sum(&|r| r.usage.cached_input_tokens));
    let cost_metric = sum_metric(&text, "atlas_llm_cost_usd_total", &[]);
    let cost_records: i64 = recs.iter().map(|r| r.cost_micros).sum();
    assert!((cost_metric - cost_records as f64 / 1e6).abs() < 1e-9, "cost counter {cost_metric} vs records {}", cost_records as f64 / 1e6);
    let calls: usize = recs.iter().map(|r| r.calls.len()).sum();
    assert_eq!(sum_metric(&text, "atlas_llm_requests_total", &[]), calls as f64);
    assert_eq!(llm.calls(), calls, "every call is on a record");
    assert_eq!(sum_metric(&text, "atlas_messages_deleted_total", &[]), n as f64);
}

#[test]
fn a_live_scrape_of_the_worker_passes_promtool() {
    let Some(promtool) = which("promtool") else {
        panic!("promtool is not installed: run scripts/install-tools.sh (apt-get install prometheus)");
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bin = env!("CARGO_BIN_EXE_atlas-codex");
    let cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(bin);
        c.args(["--stage", "local"])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("OPENAI_API_KEY")
            .env("ATLAS__STORAGE__DATA_DIR", dir.path())
            .env("ATLAS__ADMIN__LISTEN", format!("127.0.0.1:{port}"))
            .env("ATLAS__LLM__PROVIDER", "simulated")
            .env("ATLAS__LLM__SIMULATED_LATENCY_MS", "5")
            .env("ATLAS__QUEUE__WAIT_TIME_SECS", "1");
        c
    };
    let jobs: Vec<String> = (0..10).map(|i| text_job(&format!("s-{i}"))).collect();
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, jobs.join("\n")).unwrap();
    assert!(cmd(&["submit", file.to_str().unwrap()]).output().unwrap().status.success());
    let mut child = cmd(&["worker"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(b) = http_get(port, "/metrics") {
            if metric_value(&b, "atlas_jobs_total", &[("outcome", "completed"), ("reason", "ok")]) == 10.0 {
                body = b;
                break;
            }
        }
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(body.contains("atlas_jobs_total"), "no job metrics scraped:\n{body}");
    let f = dir.path().join("scrape.txt");
    std::fs::write(&f, &body).unwrap();
    let out = std::process::Command::new(promtool).args(["check", "metrics"]).stdin(std::fs::File::open(&f).unwrap()).output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("atlas_job_duration_seconds_bucket"), "histograms export as histograms");
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(name)).find(|p| p.is_file())
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}
