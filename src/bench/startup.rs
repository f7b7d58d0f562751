//! The real binary's start-up: time until `/readyz` answers, and resident memory once idle.

use std::time::{Duration, Instant};

use super::procstat::status_kib;
use super::settings::tempdir;

/// Start-up numbers of the real binary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Startup {
    /// From spawn to `/readyz` answering 200, ms.
    pub ready_ms: f64,
    /// Resident memory once idle, MiB.
    pub idle_rss_mib: f64,
}

/// Starts `atlas-codex --stage local worker` on a free port and measures it.
pub(super) async fn measure_startup() -> Result<Startup, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempdir()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args(["--stage", "local", "worker"])
        .env("ATLAS__STORAGE__DATA_DIR", &dir)
        .env("ATLAS__ADMIN__LISTEN", format!("127.0.0.1:{port}"))
        .env("ATLAS__LLM__PROVIDER", "simulated")
        .env("ATLAS__TELEMETRY__LOG_LEVEL", "error")
        .env_remove("OPENAI_API_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the worker binary: {e}"))?;
    let ready_ms = loop {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("worker not ready within 10 s".into());
        }
        if readyz(port).await {
            break t0.elapsed().as_secs_f64() * 1000.0;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let idle_rss_mib = status_kib(&pid, "VmRSS:") / 1024.0;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Startup { ready_ms, idle_rss_mib })
}

/// Whether `GET /readyz` on `port` answers 200.
async fn readyz(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    buf.starts_with(b"HTTP/1.1 200")
}
