//! The command line as scripts use it: exit codes, `--output json`, `validate --all-stages`,
//! submit / status / budget / dlq on the embedded stage.

use std::process::{Command, Output};

use serde_json::Value;

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        Cli { dir: tempfile::tempdir().unwrap() }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_atlas-codex"));
        c.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("STAGE")
            .env_remove("OPENAI_API_KEY")
            .env_remove("GPT5_ENABLED")
            .env_remove("FORCE_GPT4")
            .env_remove("MONTHLY_BUDGET")
            .env_remove("DEFAULT_MODEL_STRATEGY")
            .env("ATLAS__STORAGE__DATA_DIR", self.dir.path())
            .env("ATLAS__ADMIN__LISTEN", "")
            .env("ATLAS__LLM__PROVIDER", "simulated")
            .env("ATLAS__LLM__SIMULATED_LATENCY_MS", "1")
            .env("ATLAS__QUEUE__WAIT_TIME_SECS", "1");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn every_command_has_help() {
    let c = Cli::new();
    for cmd in [
        vec![],
        vec!["worker"],
        vec!["submit"],
        vec!["status"],
        vec!["validate"],
        vec!["budget"],
        vec!["dlq"],
        vec!["dlq", "list"],
        vec!["dlq", "redrive"],
        vec!["provision"],
        vec!["demo"],
        vec!["bench"],
        vec!["completions"],
        vec!["man"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let o = c.run(&args);
        assert!(o.status.success(), "{cmd:?} --help");
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage:"), "{cmd:?}");
    }
    assert_eq!(c.run(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn validate_all_stages_passes_for_the_shipped_configs_and_names_a_shared_resource() {
    let c = Cli::new();
    let o = c.run(&["--output", "json", "validate", "--all-stages"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    assert_eq!(v["ok"], true);
    let names: Vec<String> =
        v["resources"].as_array().unwrap().iter().map(|r| r["resources"]["queue"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["atlas-codex-queue-local", "atlas-codex-queue-preview", "atlas-codex-queue-production"]);
    let keys: Vec<&String> = v["resources"][0]["resources"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["bucket", "budget_table", "dlq", "event_topic", "jobs_table", "metrics_namespace", "queue"],
        "JSON keys are snake_case"
    );

    // One extra file layered over every stage makes them share a queue.
    let shared = c.dir.path().join("shared.toml");
    std::fs::write(&shared, "[queue]\nname = \"atlas-codex-queue-shared\"\n").unwrap();
    let o = c.run(&["--config", shared.to_str().unwrap(), "--output", "json", "validate", "--all-stages"]);
    assert_eq!(o.status.code(), Some(2));
    let v = json(&o);
    assert_eq!(v["ok"], false);
    let problems = v["problems"].to_string();
    assert!(problems.contains("atlas-codex-queue-shared") && problems.contains("queue"), "{problems}");

    // A table that names another stage.
    let cross = c.dir.path().join("cross.toml");
    std::fs::write(&cross, "[storage]\njobs_table = \"atlas-codex-jobs-production\"\n").unwrap();
    let o = c.run(&["--stage", "preview", "--config", cross.to_str().unwrap(), "validate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("names stage `production`"));
}

#[test]
fn a_preview_or_production_worker_without_a_provider_key_refuses_to_start_and_validate_says_why() {
    let c = Cli::new();
    for stage in ["preview", "production"] {
        let o = c.cmd(&["--stage", stage, "worker", "--exit-when-idle"]).env_remove("ATLAS__LLM__PROVIDER").output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{stage}: {}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        assert!(err.contains("OPENAI_API_KEY is not set") && err.contains("llm.provider = \"simulated\""), "{err}");
        // An empty key is no key.
        let o = c
            .cmd(&["--stage", stage, "worker", "--exit-when-idle"])
            .env_remove("ATLAS__LLM__PROVIDER")
            .env("OPENAI_API_KEY", "")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));

        let o = c.cmd(&["--stage", stage, "--output", "json", "validate"]).env_remove("ATLAS__LLM__PROVIDER").output().unwrap();
        assert!(o.status.success(), "a deploy pipeline without the Secret still validates: {}", String::from_utf8_lossy(&o.stderr));
        let v = json(&o);
        assert!(v["warnings"].to_string().contains("OPENAI_API_KEY is not set"), "{v}");
        // Chosen explicitly, the simulated model is no warning.
        let v = json(&c.run(&["--stage", stage, "--output", "json", "validate"]));
        assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    }
    // The local stage still runs the simulated model without a key.
    let o = c.cmd(&["worker", "--exit-when-idle"]).env_remove("ATLAS__LLM__PROVIDER").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn invalid_configuration_exits_2_listing_every_problem() {
    let c = Cli::new();
    let o = c
        .cmd(&["--stage", "preview", "validate"])
        .env("GPT5_ENABLED", "true")
        .env("FORCE_GPT4", "true")
        .env("ATLAS__WORKER__CONCURENCY", "5")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("worker.concurency"), "unknown key named: {err}");
}

#[test]
fn submit_status_budget_and_dlq_speak_json() {
    let c = Cli::new();
    let jobs = r#"{"job_id":"c-1","text":"Price: $5","instructions":"Extract the price","schema":{"type":"object","properties":{"price":{"type":"number"}},"required":["price"]}}
{"text":"no id given","instructions":"Summarize"}
{"job_id":"c-bad","type":"teleport","text":"x"}"#;
    // An invalid line stops the whole submission (nothing half-sent).
    let o = c.run_stdin(&["submit", "-"], jobs);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 3"));

    let good: String = jobs.lines().take(2).collect::<Vec<_>>().join("\n");
    let o = c.run_stdin(&["--output", "json", "submit", "-"], &good);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ids = json(&o);
    assert_eq!(ids.as_array().unwrap().len(), 2);
    assert_eq!(ids[0], "c-1");

    let st = json(&c.run(&["--output", "json", "status", "c-1"]));
    assert_eq!(st["status"], "pending");

    assert!(c.run(&["worker", "--exit-when-idle"]).status.success());
    let st = json(&c.run(&["--output", "json", "status", "c-1"]));
    assert_eq!(st["status"], "completed");
    assert!(st["data"]["price"].is_number());
    assert!(st["simulated"].as_bool().unwrap());
    let second = ids[1].as_str().unwrap();
    assert_eq!(json(&c.run(&["--output", "json", "status", second]))["status"], "completed");

    let b = json(&c.run(&["--output", "json", "budget"]));
    let spent = b["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0);
    assert!(
        (b["limit_usd"].as_f64().unwrap() - spent - b["reserved_usd"].as_f64().unwrap() - b["remaining_usd"].as_f64().unwrap()).abs()
            < 1e-9
    );
    assert!(b["by_model"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum::<f64>() - spent < 1e-9);

    assert_eq!(c.run(&["status", "nobody"]).status.code(), Some(3), "unknown job → 3");
    assert_eq!(c.run(&["status", "bad/id"]).status.code(), Some(2), "invalid id → 2");

    // A dead letter, listed without consuming, then redriven.
    let o = c.run_stdin(&["submit", "-"], r#"{"job_id":"c-dead","text":"x","instructions":"y","model":"gpt-9"}"#);
    assert!(o.status.success());
    assert!(c.run(&["worker", "--exit-when-idle"]).status.success());
    let dl = json(&c.run(&["--output", "json", "dlq", "list"]));
    assert_eq!(dl.as_array().unwrap().len(), 1);
    assert!(dl[0]["reason"].as_str().unwrap().contains("model_forbidden"));
    assert_eq!(json(&c.run(&["--output", "json", "dlq", "list"])).as_array().unwrap().len(), 1, "peek does not consume");
    // A permanent failure stays unless named.
    let dry = String::from_utf8_lossy(&c.run(&["dlq", "redrive", "--dry-run"]).stdout).to_string();
    assert!(dry.contains("would move 0 message(s)") && dry.contains("left 1 in the DLQ (model_forbidden 1)"), "{dry}");
    let r = json(&c.run(&["--output", "json", "dlq", "redrive"]));
    assert_eq!((r["moved"].as_u64(), r["left_by_kind"]["model_forbidden"].as_u64()), (Some(0), Some(1)), "{r}");
    let dry = json(&c.run(&["--output", "json", "dlq", "redrive", "--dry-run", "--reason", "model_forbidden"]));
    assert_eq!(dry["moved"], 1);
    assert_eq!(json(&c.run(&["--output", "json", "dlq", "list"])).as_array().unwrap().len(), 1, "a dry run moves nothing");
    let r = json(&c.run(&["--output", "json", "dlq", "redrive", "--reason", "model_forbidden"]));
    assert_eq!(r["moved_by_kind"], serde_json::json!({"model_forbidden": 1}), "{r}");
    assert_eq!(json(&c.run(&["--output", "json", "dlq", "list"])).as_array().unwrap().len(), 0);
}

#[test]
fn dlq_redrive_ends_while_a_worker_dead_letters_the_same_messages_again() {
    let c = Cli::new();
    let jobs: String = (0..5)
        .map(|i| format!(r#"{{"job_id":"bounce-{i}","text":"x","instructions":"y","model":"gpt-9"}}"#))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(c.run_stdin(&["submit", "-"], &jobs).status.success());
    assert!(c.run(&["worker", "--exit-when-idle"]).status.success());
    assert_eq!(json(&c.run(&["--output", "json", "dlq", "list"])).as_array().unwrap().len(), 5);

    // A worker that dead-letters each redriven message again within milliseconds.
    let mut worker = c.cmd(&["worker"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    for round in 0..3 {
        let mut redrive = c.cmd(&["--output", "json", "dlq", "redrive", "--all"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(st) = redrive.try_wait().unwrap() {
                break st;
            }
            if std::time::Instant::now() > deadline {
                redrive.kill().unwrap();
                let _ = worker.kill();
                panic!("round {round}: dlq redrive did not end within 30 s while a worker was running");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert!(status.success());
        let mut out = String::new();
        std::io::Read::read_to_string(&mut redrive.stdout.take().unwrap(), &mut out).unwrap();
        let r: Value = serde_json::from_str(&out).unwrap();
        assert!(r["moved"].as_u64().unwrap() <= 5, "never more than the DLQ held when it started: {r}");
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    worker.kill().unwrap();
    let _ = worker.wait();
}

#[test]
fn large_inputs_go_by_claim_check() {
    let c = Cli::new();
    let big = "word ".repeat(70_000); // 350 KB, over the 256 KiB message limit
    let msg = serde_json::json!({"job_id": "big-1", "text": big}).to_string();
    let o = c.run_stdin(&["submit", "-"], &msg);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stored = c.dir.path().join("artifacts/inputs/big-1");
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), big, "the input went to inputs/{{job_id}}");
    assert!(c.run(&["worker", "--exit-when-idle"]).status.success());
    let st = json(&c.run(&["--output", "json", "status", "big-1"]));
    assert_eq!(st["status"], "completed", "{st}");
}

#[test]
fn every_job_outcome_line_carries_its_own_jobs_span() {
    let c = Cli::new();
    // Good jobs and jobs that are dead-lettered (a store call, so the task yields while settling).
    let jobs: String = (0..80)
        .map(|i| {
            let model = if i % 2 == 0 { r#","model":"gpt-9""# } else { "" };
            format!(r#"{{"job_id":"span-{i}","text":"Price: ${i}","instructions":"Extract the price"{model}}}"#)
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(c.run_stdin(&["submit", "-"], &jobs).status.success());
    let o = c
        .cmd(&["worker", "--exit-when-idle"])
        .env("ATLAS__TELEMETRY__LOG_FORMAT", "json")
        .env("ATLAS__WORKER__CONCURRENCY", "32")
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut outcomes = 0;
    for line in String::from_utf8_lossy(&o.stderr).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        if v["message"] != "job outcome" {
            continue;
        }
        outcomes += 1;
        assert_eq!(v["span"]["job_id"], v["job_id"], "a job outcome logged in another job's span: {line}");
    }
    assert_eq!(outcomes, 80);
}

#[test]
fn a_closed_stdout_ends_a_command_quietly_instead_of_panicking() {
    let c = Cli::new();
    for args in [vec!["validate", "--all-stages"], vec!["demo"], vec!["--output", "json", "budget"]] {
        let mut child = c.cmd(&args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take()); // `| true`: the reader is gone before the first line
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn a_mistyped_stage_is_refused_with_the_stage_it_most_likely_meant() {
    let c = Cli::new();
    for (given, meant) in [("prod", "production"), ("preveiw", "preview"), ("Production2", "production"), ("loca", "local")] {
        let o = c.run(&["--stage", given, "status", "x"]);
        assert_eq!(o.status.code(), Some(2), "{given}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("did you mean `{meant}`?")), "{given}: {err}");
    }
    let o = c.run(&["--stage", "zzzzzz", "status", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("did you mean"), "nothing close, nothing suggested");
}

#[test]
fn the_demo_prints_a_total_and_never_charges_the_stages_budget_with_simulated_costs() {
    let c = Cli::new();
    let o = c.run(&["--output", "json", "demo"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    let jobs = v["jobs"].as_array().unwrap();
    assert!(jobs.len() >= 3);
    let sum: f64 = jobs.iter().map(|j| j["cost_usd"].as_f64().unwrap()).sum();
    assert!(sum > 0.0);
    assert!((v["total"]["cost_usd"].as_f64().unwrap() - sum).abs() < 1e-9, "{v}");
    assert_eq!(v["total"]["jobs"], jobs.len());
    assert_eq!(v["total"]["simulated"], true);
    assert!(jobs.iter().filter(|j| j["model"].is_string()).all(|j| j["simulated"] == true), "{v}");
    let b = json(&c.run(&["--output", "json", "budget"]));
    assert_eq!(b["spent_usd"].as_f64(), Some(0.0), "simulated demo costs reached the stage's ledger: {b}");
    let table = String::from_utf8_lossy(&c.run(&["demo"]).stdout).to_string();
    assert!(table.contains("SIM. USD") && table.lines().any(|l| l.starts_with("TOTAL")), "{table}");
}

#[test]
fn shell_completions_and_a_man_page_are_generated_from_the_command_line_itself() {
    let c = Cli::new();
    for shell in ["bash", "zsh", "fish"] {
        let o = c.run(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(script.contains("redrive") && script.contains("exit-when-idle"), "{shell}: every subcommand and flag");
        if shell == "bash" {
            let path = c.dir.path().join("atlas-codex.bash");
            std::fs::write(&path, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
        }
    }
    assert_eq!(c.run(&["completions", "cmd.exe"]).status.code(), Some(2));
    let o = c.run(&["man"]);
    assert!(o.status.success());
    let man = String::from_utf8_lossy(&o.stdout);
    assert!(man.contains(".TH atlas-codex 1") && man.contains("dlq") && man.contains("worker"), "{man}");
}

#[test]
fn caller_secrets_are_not_left_readable_in_the_local_database_file() {
    let c = Cli::new();
    let secret = "caller-token-Qm47Zr19Lx";
    let jobs = [
        format!(r#"{{"job_id":"f-1","url":"http://169.254.169.254/latest/","headers":{{"Authorization":"Bearer {secret}"}}}}"#),
        format!(r#"{{"job_id":"f-2","url":"http://[fd00:ec2::254]/","headers":{{"X-Api-Key":"{secret}"}}}}"#),
    ]
    .join("\n");
    assert!(c.run_stdin(&["submit", "-"], &jobs).status.success());
    assert!(c.run(&["worker", "--exit-when-idle"]).status.success());
    assert_eq!(json(&c.run(&["--output", "json", "dlq", "list"])).as_array().unwrap().len(), 2);
    let mut files = 0;
    for e in std::fs::read_dir(c.dir.path()).unwrap() {
        let path = e.unwrap().path();
        if path.to_string_lossy().contains(".sqlite") {
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{} holds the caller's secret", path.display());
        }
    }
    assert!(files >= 1);
}
