//! Safe page fetching: the only way the worker reaches the network on a job's behalf.
//!
//! A job's URL is attacker-controlled, so every request is guarded against SSRF:
//! - only `http` and `https` URLs; credentials in the URL are refused;
//! - a host name is resolved once by `GuardedResolver`, the resolver reqwest itself uses to
//!   connect: **every** resolved address is checked and the whole answer is refused if any one is
//!   not public, so the connection can only go to an address that was checked (no second lookup,
//!   no DNS-rebinding window between check and connect);
//! - IP-literal URLs (which reqwest connects to without resolving) are checked before sending;
//! - redirects are followed by hand (`Policy::none`), at most `max_redirects`, each hop checked
//!   again (scheme and address); credentials (`Authorization`, `Cookie`) are dropped when a hop
//!   leaves the origin;
//! - no proxy from the environment is used (a proxy would resolve the name itself, unchecked);
//! - the body is streamed and capped at `max_body_bytes` counted **after** decompression, so a
//!   gzip bomb is refused after reading at most the cap;
//! - a connect timeout and a total timeout (all hops and the body) apply;
//! - the content type must match `allowed_content_types` (prefix match). A response without a
//!   `Content-Type` is accepted as `text/html` only when its first bytes look like HTML
//!   (a doctype, `<html`, `<head` or `<body`), otherwise refused;
//! - bodies are decoded to text: the charset from the `Content-Type` header, else a BOM, else
//!   UTF-8 when the bytes are valid UTF-8, else a `<meta charset>` declaration in the first 1024
//!   bytes, else windows-1252 (the HTML default). Decoding is lossy (bad sequences become U+FFFD)
//!   rather than an error: a page with one stray byte is still worth extracting.
//!
//! Refused address ranges (unless `allow_private_networks`): private 10/8, 172.16/12, 192.168/16;
//! loopback 127/8, ::1; link-local 169.254/16, fe80::/10; CGNAT 100.64/10; unique-local fc00::/7;
//! site-local fec0::/10; multicast; unspecified; broadcast; documentation, benchmarking and
//! reserved ranges; and IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64, 6to4) are
//! judged as the IPv4 address they carry. Cloud metadata endpoints (169.254.169.254,
//! 169.254.170.2, fd00:ec2::254, 100.100.100.200), unspecified, broadcast and multicast addresses
//! are refused **even with** `allow_private_networks`: no local setup has a reason to fetch them.

mod address;
mod body;
mod error;
mod headers;
mod redirect;
mod resolve;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use url::Url;

use crate::settings::FetchSettings;
use resolve::GuardedResolver;

pub use address::{address_allowed, classify_ip, BlockReason};
pub use body::looks_like_html;
pub use error::FetchError;
pub use headers::filter_headers;

/// A fetched, checked and decoded response.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The URL after redirects (what relative links resolve against).
    pub final_url: Url,
    /// The final HTTP status (always 2xx; other statuses are errors).
    pub status: u16,
    /// The media type without parameters, lower-case (e.g. `text/html`); `text/html` when it was
    /// missing and the body looked like HTML.
    pub content_type: String,
    /// The body decoded to text (see the module doc for the charset rules).
    pub body: String,
    /// Body size in bytes after decompression, before charset decoding.
    pub bytes: usize,
}

/// The guarded HTTP client. Cheap to share (`&Fetcher` across tasks); build one per process.
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
    exempt: Vec<SocketAddr>,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Builds the client from the stage's fetch settings.
    pub fn new(settings: &FetchSettings) -> Result<Fetcher, FetchError> {
        Fetcher::build(settings.clone(), Arc::new(HashMap::new()), Vec::new())
    }

    /// Test hook: answers DNS for these names from the map instead of the system resolver.
    /// The answers go through exactly the same address checks as real DNS answers, so a
    /// public-looking name that maps to a private address is refused. Names are lower-case.
    pub fn with_resolver_overrides(self, map: HashMap<String, Vec<IpAddr>>) -> Result<Fetcher, FetchError> {
        let map = map.into_iter().map(|(k, v)| (k.trim_end_matches('.').to_ascii_lowercase(), v)).collect();
        Fetcher::build(self.settings, Arc::new(map), self.exempt)
    }

    /// Test hook: lets IP-literal URLs reach exactly these socket addresses (address **and**
    /// port) although the policy would refuse them, so a test can serve a first hop from a
    /// loopback fixture while every other loopback target (other ports, names that resolve to
    /// loopback, redirects elsewhere) stays refused. Production code never calls this.
    pub fn with_exempt_socket_addrs(mut self, addrs: Vec<SocketAddr>) -> Fetcher {
        self.exempt = addrs;
        self
    }

    /// The client itself: DNS through [`GuardedResolver`], redirects not followed, no proxy, both timeouts.
    fn build(
        settings: FetchSettings,
        overrides: Arc<HashMap<String, Vec<IpAddr>>>,
        exempt: Vec<SocketAddr>,
    ) -> Result<Fetcher, FetchError> {
        let resolver = GuardedResolver { allow_private: settings.allow_private_networks, overrides: overrides.clone() };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(resolver))
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
            .timeout(Duration::from_secs(settings.total_timeout_secs.max(1)))
            .user_agent(settings.user_agent.clone())
            .referer(false)
            .build()
            .map_err(|e| FetchError::Config(e.without_url().to_string()))?;
        Ok(Fetcher { client, settings, overrides, exempt })
    }

    /// The settings this fetcher enforces.
    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// The product token of the User-Agent (e.g. `AtlasCodexBot`), used to pick robots.txt groups.
    pub fn bot_name(&self) -> &str {
        let ua = self.settings.user_agent.trim();
        let first = ua.split_whitespace().next().unwrap_or("");
        first.split('/').next().unwrap_or("")
    }

    /// Fetches `url` with no extra headers. See [`Fetcher::fetch_with_headers`].
    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        self.fetch_with_headers(url, &HeaderMap::new()).await
    }

    /// Fetches `url` under every rule in the module doc. `headers` should come from
    /// [`filter_headers`]; they are filtered again here (cookies per `allow_cookies`).
    pub async fn fetch_with_headers(&self, url: &str, headers: &HeaderMap) -> Result<Fetched, FetchError> {
        let secs = self.settings.total_timeout_secs.max(1);
        match tokio::time::timeout(Duration::from_secs(secs), self.fetch_inner(url, headers)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout { secs }),
        }
    }

    /// POSTs `body` to `url` under the same address rules as a fetch (checked DNS, pinned
    /// connection, no proxy); a redirect is not followed (its status is returned). Reads at most
    /// 64 KiB of the answer and returns its status. For webhooks ([`crate::webhook`]).
    pub async fn post(&self, url: &str, headers: HeaderMap, body: Vec<u8>) -> Result<u16, FetchError> {
        let secs = self.settings.total_timeout_secs.max(1);
        let target = self.check_url_str(url)?;
        let send = async {
            let mut resp = self.client.post(target).headers(headers).body(body).send().await.map_err(|e| self.map_reqwest(e))?;
            let status = resp.status().as_u16();
            let mut read = 0usize;
            while read < 64 * 1024 {
                match resp.chunk().await {
                    Ok(Some(c)) => read += c.len(),
                    Ok(None) | Err(_) => break,
                }
            }
            Ok(status)
        };
        match tokio::time::timeout(Duration::from_secs(secs), send).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout { secs }),
        }
    }

    /// One GET of `url` (no redirect followed), reqwest's errors mapped.
    async fn send(&self, url: &Url, headers: &HeaderMap) -> Result<reqwest::Response, FetchError> {
        self.client.get(url.clone()).headers(headers.clone()).send().await.map_err(|e| self.map_reqwest(e))
    }

    /// Parses `url`, then applies the checks of `check_url`.
    fn check_url_str(&self, url: &str) -> Result<Url, FetchError> {
        let parsed = Url::parse(url.trim()).map_err(|e| FetchError::InvalidUrl(e.to_string()))?;
        self.check_url(parsed)
    }

    /// Scheme, host and (for IP literals) address checks done before any request.
    fn check_url(&self, mut url: Url) -> Result<Url, FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Scheme(url.scheme().to_string()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::InvalidUrl("credentials in the URL are not allowed".into()));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let ip = match url.host() {
            None => return Err(FetchError::InvalidUrl("URL has no host".into())),
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(url::Host::Domain(d)) => {
                // A name that is really an address literal (never produced by `url`, but be sure).
                d.parse::<IpAddr>().ok()
            }
        };
        if let Some(ip) = ip {
            let exempt = self.exempt.contains(&SocketAddr::new(ip, port));
            if !exempt {
                address_allowed(ip, self.settings.allow_private_networks).map_err(|reason| FetchError::Blocked {
                    host: url.host_str().unwrap_or_default().to_string(),
                    addr: ip,
                    reason,
                })?;
            }
        }
        url.set_fragment(None);
        Ok(url)
    }

    /// The resolver overrides in force (empty in production).
    pub fn resolver_overrides(&self) -> &HashMap<String, Vec<IpAddr>> {
        &self.overrides
    }
}
