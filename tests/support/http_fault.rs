//! An HTTP fault proxy in front of moto that understands AWS requests: it forwards every request
//! and, while a fault is on, answers DynamoDB writes (`PutItem`, `UpdateItem`, `DeleteItem`,
//! `BatchWriteItem`, `TransactWriteItems`) with the 500 `InternalServerError` DynamoDB sends
//! when it fails, without forwarding them. Reads, SQS and S3 pass untouched. It counts the
//! DynamoDB writes it refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

const WRITES: [&str; 5] = ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"];

struct Shared {
    upstream: String,
    client: reqwest::Client,
    fail_dynamo_writes: AtomicBool,
    refused: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct AwsFaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl AwsFaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> AwsFaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("proxy client"),
            fail_dynamo_writes: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        });
        let app = axum::Router::new().fallback(forward).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AwsFaultProxy { addr, shared, task }
    }

    /// The proxy's URL, to use as the AWS endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Turns the DynamoDB write fault on or off.
    pub fn fail_dynamo_writes(&self, on: bool) {
        self.shared.fail_dynamo_writes.store(on, Ordering::SeqCst);
    }

    /// DynamoDB writes answered with a 500 so far.
    pub fn refused_writes(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for AwsFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_write = target.strip_prefix("DynamoDB_20120810.").is_some_and(|op| WRITES.contains(&op));
    if is_write && shared.fail_dynamo_writes.load(Ordering::SeqCst) {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error (injected by the test's fault proxy)"}"#;
        return (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "application/x-amz-json-1.0")], body).into_response();
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = shared.client.request(method, format!("{}{path}", shared.upstream)).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let mut out_headers = HeaderMap::new();
            for (name, value) in resp.headers() {
                if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                    out_headers.append(name, value.clone());
                }
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = status;
            *out.headers_mut() = out_headers;
            out
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    }
}
