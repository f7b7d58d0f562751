//! The moto AWS emulator for integration tests.
//!
//! [`endpoint`] returns `ATLAS_TEST_MOTO_ENDPOINT` when set (`scripts/test.sh` starts one server for
//! the whole run via `scripts/moto.sh`); otherwise it starts `moto_server` itself, once per test
//! process, on a free loopback port, from `.venv/bin/moto_server` or `PATH`. A small shell
//! watchdog stops that server when the test process exits. Missing moto is a test failure with
//! instructions, never a silent skip.
//!
//! [`stage_settings`] gives each test its own stage name, so every queue, table and bucket is
//! unique to the test and queues stay shallow (moto's receive slows as a queue deepens).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use atlas_codex::settings::{BackendKind, Settings};

/// The environment variable naming a running moto server, e.g. `http://127.0.0.1:5555`.
pub const ENV: &str = "ATLAS_TEST_MOTO_ENDPOINT";

static STARTED: OnceLock<Result<String, String>> = OnceLock::new();

/// The moto endpoint to test against (starting a server when none is given). Panics with a clear
/// message when moto is unavailable.
pub fn endpoint() -> String {
    if let Ok(url) = std::env::var(ENV) {
        let url = url.trim().trim_end_matches('/').to_string();
        if !url.is_empty() {
            if !answers(&url, Duration::from_secs(5)) {
                panic!("{ENV}={url} does not answer (is moto_server running there?)");
            }
            return url;
        }
    }
    match STARTED.get_or_init(start) {
        Ok(url) => url.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The repo's wrapper that makes moto's DynamoDB writes atomic (see scripts/moto_server.py),
/// run by the venv's Python; `None` when the venv is missing.
fn atomic_wrapper() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (py, script) = (root.join(".venv/bin/python"), root.join("scripts/moto_server.py"));
    (py.is_file() && script.is_file()).then_some((py, script))
}

fn moto_binary() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("moto_server")).find(|p| p.is_file())
}

fn start() -> Result<String, String> {
    let bin = moto_binary().ok_or_else(|| {
        format!(
            "moto is not available: set {ENV} to a running moto_server, or run \
             scripts/install-tools.sh (creates .venv with moto[server]), or put moto_server on PATH"
        )
    })?;
    let wrapper = atomic_wrapper();
    let port =
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("no free loopback port for moto: {e}"))?.port();
    let log = std::env::temp_dir().join(format!("atlas-moto-{}-{port}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    // The watchdog shell runs moto and stops it once this test process is gone.
    let script = r#"
if [ -n "$4" ]; then "$1" "$4" -H 127.0.0.1 -p "$2" & else "$1" -H 127.0.0.1 -p "$2" & fi
child=$!
while kill -0 "$3" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1; done
kill "$child" 2>/dev/null
"#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("moto-watchdog")
        .arg(wrapper.as_ref().map(|w| w.0.clone()).unwrap_or_else(|| bin.clone()))
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .arg(wrapper.as_ref().map(|w| w.1.clone()).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    if answers(&url, Duration::from_secs(30)) {
        Ok(url)
    } else {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        Err(format!("moto_server ({}) did not answer on {url} within 30 s; log:\n{tail}", bin.display()))
    }
}

/// True once `GET {url}/moto-api/` answers 200 (polled until `within`). Not
/// `data.json`: that dumps every resource moto holds, which late in a run takes seconds.
fn answers(url: &str, within: Duration) -> bool {
    let Some(hostport) = url.strip_prefix("http://") else {
        return false;
    };
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(hostport) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let req = format!("GET /moto-api/ HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200" {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A stage name no other test uses (`t` + 10 hex digits): every resource name derives from it.
pub fn unique_stage() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &id[..10])
}

/// Settings for a fresh, test-private stage on moto: AWS backend, moto endpoint, `us-east-1`,
/// short visibility timeout and a low max receive count so redelivery tests run fast.
pub fn stage_settings() -> Settings {
    let mut s = Settings { stage: unique_stage(), ..Settings::default() };
    s.storage.backend = BackendKind::Aws;
    s.aws.endpoint_url = endpoint();
    s.aws.region = "us-east-1".into();
    s.aws.max_attempts = 3;
    s.queue.visibility_timeout_secs = 30;
    s.queue.max_receive_count = 3;
    s.queue.wait_time_secs = 1;
    s
}

/// The SDK config the product builds from `settings`, with static test credentials (moto accepts
/// any) instead of the default chain.
pub async fn sdk_config(settings: &Settings) -> aws_config::SdkConfig {
    atlas_codex::backend::aws::config_loader(settings).test_credentials().load().await
}
