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

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::error::JobError;
use crate::settings::FetchSettings;

/// Why an address is refused as a fetch target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// 127/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// A cloud instance metadata endpoint (refused even when private networks are allowed).
    CloudMetadata,
    /// IPv6 unique-local fc00::/7 (or deprecated site-local fec0::/10).
    UniqueLocal,
    /// Carrier-grade NAT 100.64/10.
    SharedAddressSpace,
    /// Multicast (refused even when private networks are allowed).
    Multicast,
    /// 0.0.0.0/8, :: (refused even when private networks are allowed).
    Unspecified,
    /// 255.255.255.255 (refused even when private networks are allowed).
    Broadcast,
    /// Documentation ranges (TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20).
    Documentation,
    /// Benchmarking 198.18/15.
    Benchmarking,
    /// Other special-purpose or reserved ranges (240/4, 192.0.0/24, 2001::/23, 100::/64 ...).
    Reserved,
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockReason::Loopback => "loopback address",
            BlockReason::Private => "private network address",
            BlockReason::LinkLocal => "link-local address",
            BlockReason::CloudMetadata => "cloud metadata endpoint",
            BlockReason::UniqueLocal => "unique-local (private) IPv6 address",
            BlockReason::SharedAddressSpace => "carrier-grade NAT address",
            BlockReason::Multicast => "multicast address",
            BlockReason::Unspecified => "unspecified address",
            BlockReason::Broadcast => "broadcast address",
            BlockReason::Documentation => "documentation address",
            BlockReason::Benchmarking => "benchmarking address",
            BlockReason::Reserved => "reserved address",
        })
    }
}

impl BlockReason {
    /// Whether `allow_private_networks` lifts this block (local development and tests only).
    pub fn lifted_by_allow_private(self) -> bool {
        !matches!(self, BlockReason::CloudMetadata | BlockReason::Multicast | BlockReason::Unspecified | BlockReason::Broadcast)
    }
}

/// Classifies an address: `None` when it is an ordinary public address, else why it is not.
///
/// This is the SSRF policy's core; it ignores `allow_private_networks` (see [`address_allowed`]).
pub fn classify_ip(ip: IpAddr) -> Option<BlockReason> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<BlockReason> {
    let o = ip.octets();
    let n = u32::from(ip);
    let in_net = |base: [u8; 4], bits: u32| -> bool {
        let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        (n & mask) == (u32::from(Ipv4Addr::from(base)) & mask)
    };
    if matches!(o, [169, 254, 169, 254] | [169, 254, 170, 2] | [100, 100, 100, 200]) {
        return Some(BlockReason::CloudMetadata);
    }
    if ip.is_broadcast() {
        return Some(BlockReason::Broadcast);
    }
    if in_net([0, 0, 0, 0], 8) {
        return Some(BlockReason::Unspecified);
    }
    if in_net([127, 0, 0, 0], 8) {
        return Some(BlockReason::Loopback);
    }
    if in_net([10, 0, 0, 0], 8) || in_net([172, 16, 0, 0], 12) || in_net([192, 168, 0, 0], 16) {
        return Some(BlockReason::Private);
    }
    if in_net([169, 254, 0, 0], 16) {
        return Some(BlockReason::LinkLocal);
    }
    if in_net([100, 64, 0, 0], 10) {
        return Some(BlockReason::SharedAddressSpace);
    }
    if in_net([224, 0, 0, 0], 4) {
        return Some(BlockReason::Multicast);
    }
    if in_net([192, 0, 2, 0], 24) || in_net([198, 51, 100, 0], 24) || in_net([203, 0, 113, 0], 24) {
        return Some(BlockReason::Documentation);
    }
    if in_net([198, 18, 0, 0], 15) {
        return Some(BlockReason::Benchmarking);
    }
    if in_net([240, 0, 0, 0], 4) || in_net([192, 0, 0, 0], 24) || in_net([192, 88, 99, 0], 24) {
        return Some(BlockReason::Reserved);
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> Option<BlockReason> {
    let s = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some(BlockReason::CloudMetadata);
    }
    if ip.is_unspecified() {
        return Some(BlockReason::Unspecified);
    }
    if ip.is_loopback() {
        return Some(BlockReason::Loopback);
    }
    // Every form that carries an IPv4 address is judged by that address (the one a translator
    // or tunnel would end up connecting to), and never does better than `fallback`.
    if let Some((candidates, fallback)) = embedded_v4(ip) {
        let worst = candidates.iter().filter_map(|v4| classify_v4(*v4)).min_by_key(|r| severity(*r));
        return worst.or(fallback);
    }
    if s[0] & 0xff00 == 0xff00 {
        return Some(BlockReason::Multicast);
    }
    if s[0] & 0xfe00 == 0xfc00 {
        return Some(BlockReason::UniqueLocal);
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return Some(BlockReason::LinkLocal);
    }
    if s[0] & 0xffc0 == 0xfec0 {
        return Some(BlockReason::UniqueLocal);
    }
    if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xfff0) == 0x3ff0 {
        return Some(BlockReason::Documentation);
    }
    // 100::/64 discard, 2001::/23 IETF protocol assignments.
    if (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) || (s[0] == 0x2001 && s[1] < 0x0200) {
        return Some(BlockReason::Reserved);
    }
    // Only 2000::/3 is global unicast; everything else is unassigned or special.
    if s[0] & 0xe000 != 0x2000 {
        return Some(BlockReason::Reserved);
    }
    None
}

/// The IPv4 addresses an IPv6 address embeds, and the verdict when they are all public:
/// IPv4-mapped `::ffff:a.b.c.d` and IPv4-translated `::ffff:0:a.b.c.d` (public: fine), the
/// deprecated IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` (fine) and the local-use
/// `64:ff9b:1::/48` (RFC 6052 places the address by prefix length, so both the /48 and the /96
/// positions are judged), 6to4 `2002:V4ADDR::/48` (fine) and Teredo `2001:0::/32` (server and,
/// de-obfuscated, client address). `None` for an address that embeds none.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Vec<Ipv4Addr>, Option<BlockReason>)> {
    let s = ip.segments();
    let b = ip.octets();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if s[0..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return Some((vec![v4(s[6], s[7])], None));
    }
    if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return Some((vec![v4(s[6], s[7])], None));
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] {
        return Some((vec![v4(s[6], s[7])], Some(BlockReason::Reserved)));
    }
    if s[0..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((vec![v4(s[6], s[7])], None));
    }
    if s[0..3] == [0x64, 0xff9b, 1] {
        // /48: octets 6-7, then (after the u octet 8) 9-10. /96: the last four.
        // A position left all-zero is the other layout's padding, not an address.
        let at48 = Ipv4Addr::new(b[6], b[7], b[9], b[10]);
        let at96 = v4(s[6], s[7]);
        let mut both: Vec<Ipv4Addr> = [at48, at96].into_iter().filter(|a| !a.is_unspecified()).collect();
        if both.is_empty() {
            both.push(Ipv4Addr::UNSPECIFIED);
        }
        return Some((both, Some(BlockReason::Reserved)));
    }
    if s[0] == 0x2002 {
        return Some((vec![v4(s[1], s[2])], None));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        return Some((vec![v4(s[2], s[3]), v4(!s[6], !s[7])], Some(BlockReason::Reserved)));
    }
    None
}

/// Which block wins when several embedded addresses are blocked: the metadata address first,
/// then what `allow_private_networks` cannot lift, then the rest.
fn severity(r: BlockReason) -> u8 {
    match r {
        BlockReason::CloudMetadata => 0,
        r if !r.lifted_by_allow_private() => 1,
        _ => 2,
    }
}

/// The policy decision for one address: `Ok` when it may be connected to.
pub fn address_allowed(ip: IpAddr, allow_private_networks: bool) -> Result<(), BlockReason> {
    match classify_ip(ip) {
        None => Ok(()),
        Some(r) if allow_private_networks && r.lifted_by_allow_private() => Ok(()),
        Some(r) => Err(r),
    }
}

/// Why a fetch failed. Each variant maps to a stable [`JobError`] kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// The URL's scheme is not `http` or `https` (e.g. `file`, `ftp`).
    #[error("scheme `{0}` is not allowed (only http and https)")]
    Scheme(String),
    /// The URL does not parse, has no host, or carries credentials.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The target (or one of the addresses its name resolves to) is not a public address.
    #[error("refused to connect to {addr} ({reason}) for host `{host}`")]
    Blocked {
        /// The host as written in the URL.
        host: String,
        /// The offending address.
        addr: IpAddr,
        /// Why it is refused.
        reason: BlockReason,
    },
    /// A redirect pointed somewhere a fetch may not go; `reason` is the check that failed.
    #[error("redirect to `{location}` refused: {reason}")]
    RedirectBlocked {
        /// The redirect target (query string removed).
        location: String,
        /// What was wrong with it.
        reason: Box<FetchError>,
    },
    /// The name did not resolve.
    #[error("DNS lookup for `{host}` failed: {message}")]
    Dns {
        /// The host name.
        host: String,
        /// The resolver's explanation.
        message: String,
    },
    /// More redirects than `max_redirects`.
    #[error("more than {max} redirects")]
    TooManyRedirects {
        /// The configured limit.
        max: u32,
    },
    /// The body (after decompression) exceeded `max_body_bytes`.
    #[error("response body larger than {limit} bytes (after decompression)")]
    BodyTooLarge {
        /// The configured limit, bytes.
        limit: usize,
    },
    /// The TCP connection was not established within `connect_timeout_ms`.
    #[error("connect timed out after {ms} ms")]
    ConnectTimeout {
        /// The configured limit, milliseconds.
        ms: u64,
    },
    /// The whole fetch (hops and body) took longer than `total_timeout_secs`.
    #[error("fetch timed out after {secs} s")]
    Timeout {
        /// The configured limit, seconds.
        secs: u64,
    },
    /// The content type is not in `allowed_content_types` (or missing and not HTML-looking).
    #[error("content type `{0}` is not accepted")]
    ContentType(String),
    /// A non-success HTTP status (after redirects).
    #[error("HTTP status {0}")]
    Status(u16),
    /// The server answered 429; `retry_after_secs` comes from `Retry-After` when given in seconds.
    #[error("rate limited by the server (HTTP 429)")]
    RateLimited {
        /// The server's hint, seconds.
        retry_after_secs: Option<u64>,
    },
    /// The connection failed or broke (refused, reset, TLS failure).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The body could not be decoded (e.g. corrupt gzip).
    #[error("response body could not be decoded: {0}")]
    Decode(String),
    /// The HTTP client could not be built (bad settings, e.g. an invalid User-Agent).
    #[error("fetcher configuration: {0}")]
    Config(String),
}

impl FetchError {
    /// The stable machine-readable kind recorded on the job (same as the [`JobError`] kind).
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Scheme(_) | FetchError::InvalidUrl(_) => "invalid_url",
            FetchError::Blocked { .. } => "ssrf_blocked",
            FetchError::RedirectBlocked { reason, .. } => match reason.as_ref() {
                FetchError::Scheme(_) | FetchError::Blocked { .. } => "ssrf_blocked",
                other => other.kind(),
            },
            FetchError::Dns { .. } => "dns",
            FetchError::TooManyRedirects { .. } => "too_many_redirects",
            FetchError::BodyTooLarge { .. } => "body_too_large",
            FetchError::ConnectTimeout { .. } | FetchError::Timeout { .. } => "fetch_timeout",
            FetchError::ContentType(_) => "unsupported_content_type",
            FetchError::Status(c) if (500..600).contains(c) => "http_5xx",
            FetchError::Status(c) if (400..500).contains(c) => "http_4xx",
            FetchError::Status(_) => "http_status",
            FetchError::RateLimited { .. } => "http_429",
            FetchError::Connect(_) => "fetch_connect",
            FetchError::Decode(_) => "invalid_body",
            FetchError::Config(_) => "fetch_config",
        }
    }

    /// Whether trying again later may succeed (network trouble, 5xx, 429, DNS, timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), "dns" | "fetch_timeout" | "http_5xx" | "http_429" | "fetch_connect" | "fetch_config")
    }
}

impl From<FetchError> for JobError {
    fn from(e: FetchError) -> Self {
        let kind = e.kind();
        let message = e.to_string();
        match e {
            FetchError::RateLimited { retry_after_secs } => {
                JobError::Transient { kind: kind.into(), message, retry_after: retry_after_secs.map(Duration::from_secs) }
            }
            ref other if other.is_transient() => JobError::transient(kind, message),
            _ => JobError::permanent(kind, message),
        }
    }
}

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

/// Headers a job may never set: the client owns them, they are hop-by-hop, or they would let a
/// job impersonate the worker (`User-Agent`, which robots.txt rules are matched against).
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "accept-encoding",
    "user-agent",
];

/// Keeps the caller-supplied headers a fetch may send: drops `Host`, hop-by-hop headers
/// (`Connection`, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`),
/// headers the client owns (`Content-Length`, `Expect`, `Accept-Encoding`, `User-Agent`), and
/// `Cookie` unless `allow_cookies`. Names or values that are not valid HTTP are dropped too.
pub fn filter_headers<'a, I>(headers: I, allow_cookies: bool) -> HeaderMap
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let lower = name.trim().to_ascii_lowercase();
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
            continue;
        }
        if lower == "cookie" && !allow_cookies {
            continue;
        }
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_str(value)) else {
            continue;
        };
        out.append(n, v);
    }
    out
}

/// Refusal raised inside [`GuardedResolver`]; carried through reqwest's error chain and
/// recovered as the typed [`FetchError`].
#[derive(Debug)]
struct GuardError(FetchError);

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for GuardError {}

/// The DNS resolver reqwest connects through: it resolves a name once (the system resolver, or a
/// static test map) and refuses the whole answer if any address is not allowed, so every
/// connection goes to a checked address.
struct GuardedResolver {
    allow_private: bool,
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let allow_private = self.allow_private;
        let overrides = self.overrides.clone();
        Box::pin(async move {
            let addrs = resolve_checked(&host, allow_private, &overrides)
                .await
                .map_err(|e| Box::new(GuardError(e)) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Resolves `host` and checks every address; port 0 (reqwest fills in the URL's port).
async fn resolve_checked(host: &str, allow_private: bool, overrides: &HashMap<String, Vec<IpAddr>>) -> Result<Vec<SocketAddr>, FetchError> {
    let ips: Vec<IpAddr> = match overrides.get(host) {
        Some(ips) => ips.clone(),
        None => tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| FetchError::Dns { host: host.to_string(), message: e.to_string() })?
            .map(|sa| sa.ip())
            .collect(),
    };
    if ips.is_empty() {
        return Err(FetchError::Dns { host: host.to_string(), message: "no addresses".into() });
    }
    for ip in &ips {
        if let Err(reason) = address_allowed(*ip, allow_private) {
            return Err(FetchError::Blocked { host: host.to_string(), addr: *ip, reason });
        }
    }
    Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect())
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

    async fn fetch_inner(&self, url: &str, headers: &HeaderMap) -> Result<Fetched, FetchError> {
        let pairs: Vec<(&str, &str)> = headers.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))).collect();
        let mut headers = filter_headers(pairs, self.settings.allow_cookies);
        let mut current = self.check_url_str(url)?;
        let mut hops = 0u32;
        loop {
            let resp = self.send(&current, &headers).await.map_err(|e| wrap_hop(e, hops, &current))?;
            let status = resp.status();
            if status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED {
                let Some(loc) = resp.headers().get(reqwest::header::LOCATION) else {
                    return Err(FetchError::Status(status.as_u16()));
                };
                hops += 1;
                if hops > self.settings.max_redirects {
                    return Err(FetchError::TooManyRedirects { max: self.settings.max_redirects });
                }
                let loc = String::from_utf8_lossy(loc.as_bytes()).into_owned();
                let next = current.join(loc.trim()).map_err(|e| FetchError::RedirectBlocked {
                    location: redact(&loc),
                    reason: Box::new(FetchError::InvalidUrl(e.to_string())),
                })?;
                let next = self
                    .check_url(next.clone())
                    .map_err(|e| FetchError::RedirectBlocked { location: redact(next.as_str()), reason: Box::new(e) })?;
                if next.origin() != current.origin() {
                    headers.remove(reqwest::header::AUTHORIZATION);
                    headers.remove(reqwest::header::COOKIE);
                }
                current = next;
                continue;
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let retry_after_secs = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                return Err(FetchError::RateLimited { retry_after_secs });
            }
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            return self.read_body(current, resp).await;
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

    async fn send(&self, url: &Url, headers: &HeaderMap) -> Result<reqwest::Response, FetchError> {
        self.client.get(url.clone()).headers(headers.clone()).send().await.map_err(|e| self.map_reqwest(e))
    }

    async fn read_body(&self, final_url: Url, mut resp: reqwest::Response) -> Result<Fetched, FetchError> {
        let status = resp.status().as_u16();
        let limit = self.settings.max_body_bytes;
        let header_ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|s| !s.is_empty());
        let (media, charset) = match &header_ct {
            Some(ct) => {
                let (m, c) = parse_content_type(ct);
                if !self.content_type_allowed(&m) {
                    return Err(FetchError::ContentType(m));
                }
                (Some(m), c)
            }
            None => (None, None),
        };
        // Content-Length is only left on undecoded bodies, so it is the decoded size here.
        if let Some(len) = resp.content_length() {
            if len > limit as u64 {
                return Err(FetchError::BodyTooLarge { limit });
            }
        }
        let mut body: Vec<u8> = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| self.map_reqwest(e))?;
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > limit {
                return Err(FetchError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        let content_type = match media {
            Some(m) => m,
            None if looks_like_html(&body) && self.content_type_allowed("text/html") => "text/html".to_string(),
            None => return Err(FetchError::ContentType("(missing)".into())),
        };
        let text = decode_body(&body, charset.as_deref(), &content_type);
        Ok(Fetched { final_url, status, content_type, bytes: body.len(), body: text })
    }

    fn content_type_allowed(&self, media: &str) -> bool {
        self.settings.allowed_content_types.iter().any(|a| !a.trim().is_empty() && media.starts_with(&a.trim().to_ascii_lowercase()))
    }

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

    fn map_reqwest(&self, e: reqwest::Error) -> FetchError {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(g) = s.downcast_ref::<GuardError>() {
                return g.0.clone();
            }
            src = s.source();
        }
        if e.is_timeout() {
            if e.is_connect() {
                return FetchError::ConnectTimeout { ms: self.settings.connect_timeout_ms };
            }
            return FetchError::Timeout { secs: self.settings.total_timeout_secs };
        }
        if e.is_decode() {
            return FetchError::Decode(error_chain(&e.without_url()));
        }
        FetchError::Connect(error_chain(&e.without_url()))
    }

    /// The resolver overrides in force (empty in production).
    pub fn resolver_overrides(&self) -> &HashMap<String, Vec<IpAddr>> {
        &self.overrides
    }
}

/// A refusal on a redirect hop is reported as such.
fn wrap_hop(e: FetchError, hops: u32, url: &Url) -> FetchError {
    if hops > 0 && matches!(e, FetchError::Blocked { .. } | FetchError::Scheme(_) | FetchError::InvalidUrl(_)) {
        FetchError::RedirectBlocked { location: redact(url.as_str()), reason: Box::new(e) }
    } else {
        e
    }
}

/// The URL without query and fragment (they may carry tokens), for error messages.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or("").chars().take(200).collect(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// Splits `type/subtype; charset=x` into the lower-case media type and the charset label.
fn parse_content_type(ct: &str) -> (String, Option<String>) {
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("charset")).then(|| v.trim().trim_matches(['"', '\'']).to_string())
    });
    (media, charset)
}

/// Whether the first bytes look like an HTML document (used when `Content-Type` is missing).
pub fn looks_like_html(body: &[u8]) -> bool {
    let head = &body[..body.len().min(1024)];
    let text = String::from_utf8_lossy(head).trim_start_matches('\u{feff}').trim_start().to_ascii_lowercase();
    text.starts_with("<!doctype html")
        || text.starts_with("<html")
        || text.starts_with("<head")
        || text.starts_with("<body")
        || (text.starts_with("<!--") && (text.contains("<html") || text.contains("<!doctype html")))
}

/// Decodes a body to text (see the module doc for the order of rules).
fn decode_body(body: &[u8], header_charset: Option<&str>, media: &str) -> String {
    if let Some(enc) = header_charset.and_then(|c| encoding_rs::Encoding::for_label(c.as_bytes())) {
        // A BOM still wins over the header, as browsers do.
        let (text, _, _) = enc.decode(body);
        return text.into_owned();
    }
    if let Some((enc, _)) = encoding_rs::Encoding::for_bom(body) {
        let (text, _, _) = enc.decode(body);
        return text.into_owned();
    }
    if let Ok(s) = std::str::from_utf8(body) {
        return s.to_string();
    }
    let is_html = media.contains("html");
    let enc =
        if is_html { meta_charset(body) } else { None }.unwrap_or(if is_html { encoding_rs::WINDOWS_1252 } else { encoding_rs::UTF_8 });
    let (text, _, _) = enc.decode(body);
    text.into_owned()
}

/// A `charset=` declaration within the first 1024 bytes (the HTML prescan window), if any.
fn meta_charset(body: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    let head = String::from_utf8_lossy(&body[..body.len().min(1024)]).to_ascii_lowercase();
    let idx = head.find("charset=")?;
    let rest = head[idx + "charset=".len()..].trim_start_matches(['"', '\'', ' ']);
    let label: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.')).collect();
    let enc = encoding_rs::Encoding::for_label(label.as_bytes())?;
    // A page cannot truthfully declare UTF-16 in ASCII-compatible bytes.
    if enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE {
        return Some(encoding_rs::UTF_8);
    }
    Some(enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_ranges() {
        for (ip, r) in [
            ("10.0.0.1", BlockReason::Private),
            ("172.16.5.4", BlockReason::Private),
            ("172.31.255.255", BlockReason::Private),
            ("192.168.1.1", BlockReason::Private),
            ("127.0.0.1", BlockReason::Loopback),
            ("127.255.0.9", BlockReason::Loopback),
            ("169.254.169.254", BlockReason::CloudMetadata),
            ("169.254.1.1", BlockReason::LinkLocal),
            ("100.64.0.1", BlockReason::SharedAddressSpace),
            ("100.127.255.254", BlockReason::SharedAddressSpace),
            ("0.0.0.0", BlockReason::Unspecified),
            ("255.255.255.255", BlockReason::Broadcast),
            ("224.0.0.1", BlockReason::Multicast),
            ("192.0.2.10", BlockReason::Documentation),
            ("198.18.0.1", BlockReason::Benchmarking),
            ("240.0.0.1", BlockReason::Reserved),
            ("::1", BlockReason::Loopback),
            ("::", BlockReason::Unspecified),
            ("fe80::1", BlockReason::LinkLocal),
            ("fd00::1", BlockReason::UniqueLocal),
            ("fc00::1", BlockReason::UniqueLocal),
            ("fd00:ec2::254", BlockReason::CloudMetadata),
            ("ff02::1", BlockReason::Multicast),
            ("2001:db8::1", BlockReason::Documentation),
            ("::ffff:127.0.0.1", BlockReason::Loopback),
            ("::ffff:10.1.2.3", BlockReason::Private),
            ("::ffff:169.254.169.254", BlockReason::CloudMetadata),
            ("64:ff9b::a9fe:a9fe", BlockReason::CloudMetadata),
            ("2002:7f00:1::", BlockReason::Loopback),
        ] {
            assert_eq!(classify_ip(v4(ip)), Some(r), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(classify_ip(v4(ip)), None, "{ip}");
        }
    }

    #[test]
    fn every_ipv6_form_that_embeds_an_ipv4_address_is_judged_by_that_address() {
        use BlockReason::*;
        for (ip, r) in [
            // IPv4-translated (RFC 2765), the form a red team used for the metadata address.
            ("::ffff:0:169.254.169.254", CloudMetadata),
            ("::ffff:0:127.0.0.1", Loopback),
            ("::ffff:0:10.0.0.1", Private),
            // IPv4-compatible (deprecated): never better than reserved.
            ("::169.254.169.254", CloudMetadata),
            ("::8.8.8.8", Reserved),
            // NAT64 well-known and local-use prefixes (both RFC 6052 positions for /48).
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b:1::a9fe:a9fe", CloudMetadata),
            ("64:ff9b:1:a9fe:a9:fe00::", CloudMetadata),
            ("64:ff9b:1::8.8.8.8", Reserved),
            // 6to4.
            ("2002:a9fe:a9fe::1", CloudMetadata),
            ("2002:c0a8:0101::1", Private),
            // Teredo: server address, and the client address (stored inverted).
            ("2001:0:a9fe:a9fe::1", CloudMetadata),
            ("2001:0:0808:0808::5601:5601", CloudMetadata),
            ("2001:0:0808:0808::f7f7:f7f7", Reserved),
            // Not in 2000::/3: not global unicast.
            ("4000::1", Reserved),
            ("1234::5", Reserved),
        ] {
            assert_eq!(classify_ip(v4(ip)), Some(r), "{ip}");
        }
        // Allowing private networks never lifts the metadata address in any of its forms.
        for ip in ["::ffff:0:169.254.169.254", "64:ff9b:1::a9fe:a9fe", "2001:0:0808:0808::5601:5601", "2002:a9fe:a9fe::"] {
            assert_eq!(address_allowed(v4(ip), true), Err(CloudMetadata), "{ip}");
        }
        for ip in ["::ffff:0:8.8.8.8", "64:ff9b::8.8.8.8", "2002:0808:0808::1", "2a00:1450:4001:81c::200e"] {
            assert_eq!(classify_ip(v4(ip)), None, "{ip}");
        }
    }

    #[test]
    fn allow_private_never_lifts_metadata() {
        assert!(address_allowed(v4("127.0.0.1"), true).is_ok());
        assert!(address_allowed(v4("10.0.0.1"), true).is_ok());
        assert_eq!(address_allowed(v4("169.254.169.254"), true), Err(BlockReason::CloudMetadata));
        assert_eq!(address_allowed(v4("fd00:ec2::254"), true), Err(BlockReason::CloudMetadata));
        assert_eq!(address_allowed(v4("127.0.0.1"), false), Err(BlockReason::Loopback));
    }

    #[test]
    fn filters_headers() {
        let h = filter_headers(
            [
                ("Host", "evil"),
                ("Connection", "close"),
                ("Keep-Alive", "1"),
                ("Proxy-Authorization", "x"),
                ("TE", "trailers"),
                ("Trailer", "x"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"),
                ("Cookie", "a=b"),
                ("Accept-Language", "fr"),
                ("X-Bad", "line\nbreak"),
            ],
            false,
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("accept-language").and_then(|v| v.to_str().ok()), Some("fr"));
        let h = filter_headers([("Cookie", "a=b")], true);
        assert_eq!(h.get("cookie").and_then(|v| v.to_str().ok()), Some("a=b"));
    }

    #[test]
    fn decodes_charsets() {
        assert_eq!(decode_body(b"caf\xe9", Some("iso-8859-1"), "text/html"), "café");
        assert_eq!(decode_body("café".as_bytes(), None, "text/html"), "café");
        let html = b"<html><head><meta charset=\"windows-1252\"></head><body>\x93hi\x94</body></html>";
        assert!(decode_body(html, None, "text/html").contains("\u{201c}hi\u{201d}"));
    }

    #[test]
    fn error_kinds_and_dispositions() {
        let e: JobError = FetchError::Blocked { host: "x".into(), addr: v4("10.0.0.1"), reason: BlockReason::Private }.into();
        assert_eq!((e.kind(), e.disposition()), ("ssrf_blocked", crate::error::Disposition::DeadLetter));
        let e: JobError = FetchError::Status(503).into();
        assert_eq!((e.kind(), e.disposition()), ("http_5xx", crate::error::Disposition::Retry));
        let e: JobError = FetchError::Status(404).into();
        assert_eq!((e.kind(), e.disposition()), ("http_4xx", crate::error::Disposition::DeadLetter));
        let e: JobError = FetchError::Timeout { secs: 3 }.into();
        assert_eq!((e.kind(), e.disposition()), ("fetch_timeout", crate::error::Disposition::Retry));
        let e: JobError = FetchError::RateLimited { retry_after_secs: Some(7) }.into();
        assert!(matches!(e, JobError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)));
        let e: JobError =
            FetchError::RedirectBlocked { location: "file:///etc/passwd".into(), reason: Box::new(FetchError::Scheme("file".into())) }
                .into();
        assert_eq!(e.kind(), "ssrf_blocked");
    }
}
