//! Fixture page server for fetch, page-processing and crawl tests: an axum server on
//! 127.0.0.1 (random port) serving the HTML under `tests/fixtures/pages/` plus hostile endpoints
//! (redirects into private addresses, redirect loops, huge bodies, slow drips, a gzip bomb, wrong
//! content types, non-UTF-8 pages). Every request path is logged with its arrival time so tests
//! can assert what was (and was not) requested. Also: listeners that never answer, for timeouts.
//!
//! Everything here listens on loopback only and never connects anywhere.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const ARTICLE: &str = include_str!("../fixtures/pages/article.html");
const BASE_HREF: &str = include_str!("../fixtures/pages/base_href.html");
const BODY_ONLY: &str = include_str!("../fixtures/pages/body_only.html");
const ROBOTS: &str = include_str!("../fixtures/pages/robots.txt");
const SITE_INDEX: &str = include_str!("../fixtures/pages/site/index.html");
const SITE_A: &str = include_str!("../fixtures/pages/site/a.html");
const SITE_B: &str = include_str!("../fixtures/pages/site/b.html");
const SITE_DEEP: &str = include_str!("../fixtures/pages/site/deep.html");
const SITE_DEEPER: &str = include_str!("../fixtures/pages/site/deeper.html");
const SITE_DEEPEST: &str = include_str!("../fixtures/pages/site/deepest.html");
const SITE_PRIVATE_OPEN: &str = include_str!("../fixtures/pages/site/private_open.html");
const SITE_PRIVATE_SECRET: &str = include_str!("../fixtures/pages/site/private_secret.html");

/// Pages of the `/library/` site: its index and one page per book linked from it.
pub const LIBRARY_PAGES: u32 = 60;
/// Sections of `/long-article.html`, each `<h2>Section {n}</h2>` and about 6 KB of prose.
pub const LONG_ARTICLE_SECTIONS: usize = 40;

/// A book page of the `/library/` site: about 900 tokens of prose under its title.
fn library_book(n: u32) -> String {
    let para = format!("Book {n} tells of a river town, its ferry and the people who kept the lamps lit through the long winter. ");
    format!(
        "<html><head><title>Book {n} - Library</title></head><body><nav><a href=\"/library/\">Library</a></nav>\
         <article><h1>Book {n}</h1><p>{}</p><p>{}</p></article></body></html>",
        para.repeat(25),
        para.repeat(20)
    )
}

fn library_index() -> String {
    let links: String = (1..LIBRARY_PAGES).map(|n| format!("<li><a href=\"/library/book/{n}\">Book {n}</a></li>")).collect();
    format!("<html><head><title>Library</title></head><body><main><h1>Library</h1><p>Every book we keep.</p><ul>{links}</ul></main></body></html>")
}

/// A 200 KB article: [`LONG_ARTICLE_SECTIONS`] sections of prose under one title.
pub fn long_article() -> String {
    let sections: String = (1..=LONG_ARTICLE_SECTIONS)
        .map(|i| {
            let para = format!("Section {i} of the annual report covers the harbour works, the tide gauges and the budget for year {i}. ");
            format!("<h2>Section {i}</h2><p>{}</p>", para.repeat(56))
        })
        .collect();
    format!("<html><head><title>Annual report</title></head><body><article><h1>Annual report</h1>{sections}</article></body></html>")
}

/// Size of `/huge`, bytes.
pub const HUGE_BYTES: usize = 3 * 1024 * 1024;
/// Decompressed size of `/gzip-bomb`, bytes.
pub const BOMB_BYTES: usize = 16 * 1024 * 1024;
/// Bytes `/drip` sends (one per [`DRIP_INTERVAL`]), so it takes about 20 s in all.
pub const DRIP_BYTES: usize = 100;
/// Pause between two bytes of `/drip` and `/drip-short`.
pub const DRIP_INTERVAL: Duration = Duration::from_millis(200);

struct Ctx {
    port: u16,
    log: Mutex<Vec<(String, Instant)>>,
}

/// A running fixture server; stops when dropped.
pub struct PageServer {
    /// Where it listens (127.0.0.1, random port).
    pub addr: SocketAddr,
    ctx: Arc<Ctx>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PageServer {
    /// Starts the server on 127.0.0.1 with a random port.
    pub async fn start() -> PageServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fixture server");
        let addr = listener.local_addr().expect("fixture addr");
        let ctx = Arc::new(Ctx { port: addr.port(), log: Mutex::new(Vec::new()) });
        let app = router(ctx.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        PageServer { addr, ctx, task }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Paths (with query) requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.ctx.log.lock().map(|l| l.iter().map(|(p, _)| p.clone()).collect()).unwrap_or_default()
    }

    /// Paths requested so far with their arrival times.
    pub fn request_times(&self) -> Vec<(String, Instant)> {
        self.ctx.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn html(body: impl Into<Body>) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body.into()).into_response()
}

fn redirect(to: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())], "").into_response()
}

fn drip(n: usize) -> Body {
    let s = futures::stream::unfold(0usize, move |i| async move {
        if i >= n {
            return None;
        }
        tokio::time::sleep(DRIP_INTERVAL).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b"x")), i + 1))
    });
    Body::from_stream(s)
}

/// A gzip stream of [`BOMB_BYTES`] spaces after an HTML prefix (tens of KiB compressed).
pub fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(b"<!DOCTYPE html><html><body><p>");
        let chunk = vec![b' '; 1024 * 1024];
        for _ in 0..BOMB_BYTES / chunk.len() {
            let _ = enc.write_all(&chunk);
        }
        enc.finish().unwrap_or_default()
    })
}

fn router(ctx: Arc<Ctx>) -> Router {
    let site = |page: &'static str| move |State(c): State<Arc<Ctx>>| async move { html(page.replace("{{PORT}}", &c.port.to_string())) };
    Router::new()
        .route("/robots.txt", get(|| async { ([(header::CONTENT_TYPE, "text/plain")], ROBOTS) }))
        .route("/site/", get(site(SITE_INDEX)))
        .route("/site/a", get(site(SITE_A)))
        .route("/site/b", get(site(SITE_B)))
        .route("/site/a/deep", get(site(SITE_DEEP)))
        .route("/site/a/deep/deeper", get(site(SITE_DEEPER)))
        .route("/site/a/deep/deeper/deepest", get(site(SITE_DEEPEST)))
        .route("/site/private/open", get(site(SITE_PRIVATE_OPEN)))
        .route("/site/private/secret", get(site(SITE_PRIVATE_SECRET)))
        .route("/article.html", get(|| async { html(ARTICLE) }))
        .route("/docs/base.html", get(|| async { html(BASE_HREF) }))
        .route("/body.html", get(|| async { html(BODY_ONLY) }))
        .route("/text", get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "plain words https://a.example/x") }))
        .route("/redirect/loopback", get(|| async { redirect("http://127.0.0.1/admin") }))
        .route("/redirect/metadata", get(|| async { redirect("http://169.254.169.254/latest/meta-data/") }))
        .route("/redirect/ula", get(|| async { redirect("http://[fd00::1]/") }))
        .route("/redirect/file", get(|| async { redirect("file:///etc/passwd") }))
        .route("/redirect/loop", get(|| async { redirect("/redirect/loop") }))
        .route(
            "/redirect/localhost",
            get(|State(c): State<Arc<Ctx>>| async move { redirect(&format!("http://localhost:{}/article.html", c.port)) }),
        )
        .route(
            "/redirect/chain/{n}",
            get(|Path(n): Path<u32>| async move {
                if n == 0 {
                    html("<html><body><main><p>end of chain</p></main></body></html>")
                } else {
                    redirect(&format!("/redirect/chain/{}", n - 1))
                }
            }),
        )
        .route("/huge", get(|| async { html(vec![b'a'; HUGE_BYTES]) }))
        .route("/library/", get(|| async { html(library_index()) }))
        .route("/library/book/{n}", get(|Path(n): Path<u32>| async move { html(library_book(n)) }))
        .route("/long-article.html", get(|| async { html(long_article()) }))
        .route("/drip", get(|| async { html(drip(DRIP_BYTES)) }))
        .route("/drip-short", get(|| async { html(drip(5)) }))
        .route(
            "/gzip-bomb",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/html"), (header::CONTENT_ENCODING, "gzip")], Body::from(gzip_bomb())).into_response()
            }),
        )
        .route("/wrong-type", get(|| async { ([(header::CONTENT_TYPE, "application/octet-stream")], vec![0u8, 1, 2, 3]).into_response() }))
        .route("/image", get(|| async { ([(header::CONTENT_TYPE, "image/png")], vec![0x89u8, b'P', b'N', b'G']).into_response() }))
        .route("/no-type-html", get(|| async { Response::new(Body::from("<!DOCTYPE html><html><body><p>untyped</p></body></html>")) }))
        .route("/no-type-binary", get(|| async { Response::new(Body::from(vec![0u8, 159, 146, 150, 1, 2])) }))
        .route(
            "/latin1",
            get(|| async {
                let body = b"<html><body><main><p>Caf\xe9 cr\xe8me \xa3</p></main></body></html>".to_vec();
                ([(header::CONTENT_TYPE, "text/html; charset=ISO-8859-1")], body).into_response()
            }),
        )
        .route(
            "/meta-charset",
            get(|| async {
                let body = b"<html><head><meta charset=\"windows-1252\"></head><body><main><p>\x93quoted\x94 \x80</p></main></body></html>"
                    .to_vec();
                ([(header::CONTENT_TYPE, "text/html")], body).into_response()
            }),
        )
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                let s = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
                (s, [(header::CONTENT_TYPE, "text/html")], "status page").into_response()
            }),
        )
        .route(
            "/rate-limited",
            get(|| async { (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "7")], "slow down").into_response() }),
        )
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let mut lines: Vec<String> =
                    headers.iter().map(|(k, v)| format!("{}: {}", k.as_str(), String::from_utf8_lossy(v.as_bytes()))).collect();
                lines.sort();
                ([(header::CONTENT_TYPE, "text/plain")], lines.join("\n")).into_response()
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/html")], "not found") })
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), log_request))
        .with_state(ctx)
}

async fn log_request(State(c): State<Arc<Ctx>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    if let Ok(mut l) = c.log.lock() {
        l.push((path, Instant::now()));
    }
    next.run(req).await
}

/// A loopback listener that accepts connections and never answers (for response timeouts).
/// Returns its address and the task holding the connections; abort the task to stop it.
pub async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind silent listener");
    let addr = listener.local_addr().expect("silent addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    (addr, task)
}

/// A loopback listener whose accept queue is full and which never accepts, so a further TCP
/// connect hangs (the kernel drops the SYN). Returns the listener and the connections filling
/// its queue (keep both alive), or `None` if the queue could not be filled within 64 tries.
pub async fn saturated_listener() -> Option<(tokio::net::TcpListener, Vec<tokio::net::TcpStream>, SocketAddr)> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.1:0".parse().ok()?).ok()?;
    let listener = socket.listen(0).ok()?;
    let addr = listener.local_addr().ok()?;
    let mut fill = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fill.push(s),
            Ok(Err(_)) => return None,
            Err(_) => return Some((listener, fill, addr)),
        }
    }
    None
}
