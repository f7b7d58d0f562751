//! A TCP fault proxy in front of a backend (moto): it forwards bytes both ways, and can freeze
//! (accept and hold every connection, forward nothing: a hung endpoint) or refuse (close every
//! connection at once: an endpoint that is down). Switching back to forwarding releases what
//! was held.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Pass bytes through.
    Forward = 0,
    /// Hold connections open and pass nothing.
    Freeze = 1,
    /// Close connections as they come.
    Refuse = 2,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream` (`http://host:port` or `host:port`).
    pub async fn start(upstream: &str, mode: Mode) -> FaultProxy {
        let target = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(AtomicU8::new(mode as u8));
        let m = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if m.load(Ordering::SeqCst) == Mode::Refuse as u8 {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let m = m.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, m.clone()), pump(sr, cw, m));
                });
            }
        });
        FaultProxy { addr, mode: state, task }
    }

    /// The proxy's URL, to use as the endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches what it does; held connections resume on [`Mode::Forward`].
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mode: Arc<AtomicU8>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match mode.load(Ordering::SeqCst) {
                x if x == Mode::Freeze as u8 => tokio::time::sleep(Duration::from_millis(50)).await,
                x if x == Mode::Refuse as u8 => return,
                _ => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
