//! What an SRE meets on day one, against the real binary and moto: a worker that starts while
//! its AWS endpoint is down stays up and unready until it answers; readiness follows a frozen
//! backend within seconds; start-up failures are one line that names the cause.

mod support;

use std::time::{Duration, Instant};

use support::metrics::metric_value;
use support::moto;
use support::procs::{run_cli, ProcEnv, WorkerProc};
use support::proxy::{FaultProxy, Mode};

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `(status, body)` of `GET url`, or `None` when nothing answers.
async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// Waits until `GET url` answers `want`, for at most `within`; the last answer otherwise.
async fn wait_status(url: &str, want: u16, within: Duration) -> Result<Duration, Option<(u16, String)>> {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < within {
        last = get(url).await;
        if matches!(&last, Some((s, _)) if *s == want) {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_unready_for_an_unreachable_backend_and_readiness_follows_a_frozen_one() {
    let endpoint = moto::endpoint();
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let direct = ProcEnv::moto(&endpoint).set("ATLAS__LLM__PROVIDER", "simulated").private_resources("preview", &format!("ops{run}"));
    run_cli(&direct, "preview", &["--output", "json", "provision"], None, CLI_TIMEOUT).await.ok("provision");

    let proxy = FaultProxy::start(&endpoint, Mode::Refuse).await;
    let port = free_port();
    let env = direct.clone().set("ATLAS__AWS__ENDPOINT_URL", &proxy.url()).set("ATLAS__ADMIN__LISTEN", &format!("127.0.0.1:{port}"));
    let logs = tempfile::tempdir().expect("log dir");
    let mut w = WorkerProc::spawn(&env, "preview", &["worker"], &logs.path().join("w.log"), "ops");
    let base = format!("http://127.0.0.1:{port}");

    // Down at start: alive, not ready, still running after several retries.
    wait_status(&format!("{base}/healthz"), 200, Duration::from_secs(10)).await.expect("/healthz answers while the backend is down");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(w.try_status().is_none(), "the worker exited while its backend was unreachable");
    let (status, body) = get(&format!("{base}/readyz")).await.expect("/readyz answers");
    assert_eq!((status, body.trim()), (503, "not ready: backends unreachable"));
    let metrics = get(&format!("{base}/metrics")).await.expect("/metrics").1;
    assert_eq!(metric_value(&metrics, "atlas_worker_ready", &[]), 0.0);

    // Up: ready without a restart.
    proxy.set(Mode::Forward);
    let took = wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(40))
        .await
        .unwrap_or_else(|last| panic!("not ready 40 s after the backend came up: {last:?}"));
    println!("ready {took:?} after the backend came up");
    assert_eq!(metric_value(&get(&format!("{base}/metrics")).await.expect("/metrics").1, "atlas_worker_ready", &[]), 1.0);

    // Frozen: unready within seconds (not after the SDK's timeouts), ready again once it thaws.
    proxy.set(Mode::Freeze);
    let took = wait_status(&format!("{base}/readyz"), 503, Duration::from_secs(20))
        .await
        .unwrap_or_else(|last| panic!("still ready 20 s into a frozen backend: {last:?}"));
    println!("unready {took:?} into the freeze");
    assert_eq!(metric_value(&get(&format!("{base}/metrics")).await.expect("/metrics").1, "atlas_worker_ready", &[]), 0.0);
    proxy.set(Mode::Forward);
    let took = wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(60))
        .await
        .unwrap_or_else(|last| panic!("not ready 60 s after the thaw: {last:?}"));
    println!("ready {took:?} after the thaw");

    w.sigterm();
    w.expect_clean_exit(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_failures_are_one_line_that_names_the_cause() {
    let endpoint = moto::endpoint();
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let env = ProcEnv::moto(&endpoint).set("ATLAS__LLM__PROVIDER", "simulated").private_resources("preview", &format!("err{run}"));
    let one_line = |what: &str, stderr: &str| {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("\"level\":\"INFO\"")).collect();
        assert_eq!(lines.len(), 1, "{what}: one line, got:\n{stderr}");
        assert!(stderr.len() < 600, "{what}: {} bytes:\n{stderr}", stderr.len());
        lines[0].to_string()
    };

    // Nothing provisioned: the queue is named, and what to do.
    let o = run_cli(&env, "preview", &["worker"], None, CLI_TIMEOUT).await;
    assert_eq!(o.code, Some(1));
    let line = one_line("unknown queue", &o.stderr);
    assert!(line.contains(&format!("atlas-codex-queue-preview-err{run}")) && line.contains("provision"), "{line}");

    // No credentials anywhere in the chain.
    let mut bare = env.clone();
    bare.vars.remove("AWS_ACCESS_KEY_ID");
    bare.vars.remove("AWS_SECRET_ACCESS_KEY");
    bare.vars.insert("HOME".into(), "/nonexistent".into());
    let o = run_cli(&bare, "preview", &["worker"], None, CLI_TIMEOUT).await;
    assert_eq!(o.code, Some(1));
    let line = one_line("no credentials", &o.stderr);
    assert!(line.contains("no AWS credentials found") && line.contains("AWS_ACCESS_KEY_ID"), "{line}");

    // Queues there, one table missing: the table is named.
    run_cli(&env, "preview", &["--output", "json", "provision"], None, CLI_TIMEOUT).await.ok("provision");
    let gone = env.clone().set("ATLAS__STORAGE__BUDGET_TABLE", &format!("atlas-codex-budget-preview-none{run}"));
    let o = run_cli(&gone, "preview", &["status", "some-job"], None, CLI_TIMEOUT).await;
    assert_eq!(o.code, Some(1));
    let line = one_line("unknown table", &o.stderr);
    assert!(line.contains(&format!("atlas-codex-budget-preview-none{run}")) && line.contains("provision"), "{line}");
    // And the bucket.
    let gone = env.clone().set("ATLAS__STORAGE__BUCKET", &format!("atlas-codex-artifacts-preview-none{run}"));
    let o = run_cli(&gone, "preview", &["worker"], None, CLI_TIMEOUT).await;
    let line = one_line("unknown bucket", &o.stderr);
    assert!(line.contains(&format!("bucket atlas-codex-artifacts-preview-none{run}")), "{line}");

    // Unreachable: named with its endpoint (the worker waits for it; a CLI command does not).
    let closed = format!("http://127.0.0.1:{}", free_port());
    let o = run_cli(&env.clone().set("ATLAS__AWS__ENDPOINT_URL", &closed), "preview", &["status", "some-job"], None, CLI_TIMEOUT).await;
    assert_eq!(o.code, Some(1));
    let line = one_line("unreachable", &o.stderr);
    assert!(line.contains(&format!("cannot reach {closed}")) && line.contains("aws.endpoint_url"), "{line}");
}

/// The fenced block between `<!-- walkthrough:begin -->` and `<!-- walkthrough:end -->` in the README.
fn readme_walkthrough() -> String {
    let readme = std::fs::read_to_string(support::procs::crate_dir().join("README.md")).expect("README.md");
    let begin = readme.find("<!-- walkthrough:begin -->").expect("walkthrough marker in README.md");
    let end = readme[begin..].find("<!-- walkthrough:end -->").expect("walkthrough end marker") + begin;
    let block = &readme[begin..end];
    let code_start = block.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let code_end = block[code_start..].find("```").expect("closing fence") + code_start;
    block[code_start..code_end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written_against_moto() {
    let endpoint = moto::endpoint();
    let script = readme_walkthrough();
    assert!(script.contains("atlas-codex provision") && script.contains("dlq redrive"), "{script}");
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    // As a reader's shell would run it, with three additions that change no command: resources
    // private to this run (other tests share the moto server), a short long poll, no admin port.
    let env = ProcEnv::new()
        .private_resources("preview", &format!("readme{run}"))
        .set("ATLAS_TEST_MOTO_ENDPOINT", &endpoint)
        .set("ATLAS__QUEUE__WAIT_TIME_SECS", "1")
        .set("ATLAS__ADMIN__LISTEN", "")
        .set("AWS_EC2_METADATA_DISABLED", "true");
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-euo").arg("pipefail").arg("-c").arg(&script);
    cmd.env_clear().envs(&env.vars).env("TMPDIR", tmp.path()).current_dir(support::procs::crate_dir());
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output()).await.expect("walkthrough within 10 min").expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the README walkthrough failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("status     completed"), "try-1 completed:\n{stdout}");
    assert!(stdout.contains("model_forbidden"), "dlq list shows try-2:\n{stdout}");
    assert!(stdout.contains("moved 1 message(s)"), "redrive moved it:\n{stdout}");
    let rendered = std::fs::read_to_string(tmp.path().join("atlas-codex-preview.yaml")).expect("helm rendered the chart");
    assert!(rendered.contains("name: atlas-codex-worker-preview"), "the trusted ServiceAccount and the release's objects");
}
