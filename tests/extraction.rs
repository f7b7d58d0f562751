//! Fetching, page processing and crawling against the loopback fixture server
//! (`tests/support/pages.rs`). SSRF cases run with `allow_private_networks = false` and never
//! reach a non-loopback address: refused targets are refused before any connection, and every
//! "public-looking" name is answered by the fetcher's static resolver map.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use atlas_codex::crawl::{crawl, CrawledPage};
use atlas_codex::error::{Disposition, JobError};
use atlas_codex::fetch::{filter_headers, BlockReason, FetchError, Fetcher};
use atlas_codex::page::{count_tokens, process, text_page, truncate_to_tokens};
use atlas_codex::settings::{CrawlSettings, FetchSettings};
use support::pages::{self, PageServer};

fn settings(allow_private: bool) -> FetchSettings {
    FetchSettings {
        allow_private_networks: allow_private,
        max_body_bytes: 1024 * 1024,
        connect_timeout_ms: 500,
        total_timeout_secs: 5,
        max_redirects: 3,
        ..FetchSettings::default()
    }
}

fn fetcher(allow_private: bool) -> Fetcher {
    Fetcher::new(&settings(allow_private)).expect("fetcher")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[track_caller]
fn assert_blocked(r: Result<atlas_codex::fetch::Fetched, FetchError>, want_addr: &str, want: BlockReason) {
    match r {
        Err(FetchError::Blocked { addr, reason, .. }) => {
            assert_eq!(addr, ip(want_addr));
            assert_eq!(reason, want);
        }
        other => panic!("expected Blocked({want_addr}, {want:?}), got {other:?}"),
    }
}

#[track_caller]
fn assert_redirect_blocked(r: Result<atlas_codex::fetch::Fetched, FetchError>, check: impl Fn(&FetchError) -> bool) {
    match r {
        Err(e @ FetchError::RedirectBlocked { .. }) => {
            let FetchError::RedirectBlocked { reason, .. } = &e else { unreachable!() };
            assert!(check(reason), "unexpected inner reason: {reason:?}");
            let job: JobError = e.into();
            assert_eq!(job.kind(), "ssrf_blocked");
            assert_eq!(job.disposition(), Disposition::DeadLetter);
        }
        other => panic!("expected RedirectBlocked, got {other:?}"),
    }
}

// ---------------------------------------------------------------- SSRF

#[tokio::test]
async fn refuses_metadata_endpoint_even_when_private_allowed() {
    for allow in [false, true] {
        let r = fetcher(allow).fetch("http://169.254.169.254/latest/meta-data/").await;
        assert_blocked(r, "169.254.169.254", BlockReason::CloudMetadata);
    }
    let r = fetcher(true).fetch("http://[fd00:ec2::254]/latest/meta-data/").await;
    assert_blocked(r, "fd00:ec2::254", BlockReason::CloudMetadata);
}

#[tokio::test]
async fn refuses_loopback_by_name_and_literal() {
    let srv = PageServer::start().await;
    let port = srv.addr.port();
    let f = fetcher(false);
    // `localhost` goes through the resolver path; the fixture would answer if it were reached.
    let r = f.fetch(&format!("http://localhost:{port}/article.html")).await;
    match r {
        Err(FetchError::Blocked { addr, reason: BlockReason::Loopback, ref host }) => {
            assert!(addr.is_loopback());
            assert_eq!(host, "localhost");
        }
        other => panic!("expected loopback block, got {other:?}"),
    }
    assert_blocked(f.fetch(&srv.url("/article.html")).await, "127.0.0.1", BlockReason::Loopback);
    assert_blocked(f.fetch(&format!("http://[::1]:{port}/")).await, "::1", BlockReason::Loopback);
    // Odd spellings normalise to the same address.
    assert_blocked(f.fetch(&format!("http://2130706433:{port}/")).await, "127.0.0.1", BlockReason::Loopback);
    assert_blocked(f.fetch(&format!("http://0x7f.0.0.1:{port}/")).await, "127.0.0.1", BlockReason::Loopback);
    assert_blocked(f.fetch(&format!("http://[::ffff:127.0.0.1]:{port}/")).await, "::ffff:127.0.0.1", BlockReason::Loopback);
    assert_blocked(f.fetch(&format!("http://[::ffff:0:127.0.0.1]:{port}/")).await, "::ffff:0:7f00:1", BlockReason::Loopback);
    assert_blocked(f.fetch(&format!("http://[64:ff9b::7f00:1]:{port}/")).await, "64:ff9b::7f00:1", BlockReason::Loopback);
    assert!(srv.requests().is_empty(), "a refused fetch reached the server: {:?}", srv.requests());
}

#[tokio::test]
async fn refuses_private_ula_and_other_ranges() {
    let f = fetcher(false);
    assert_blocked(f.fetch("http://10.0.0.1/").await, "10.0.0.1", BlockReason::Private);
    assert_blocked(f.fetch("http://192.168.1.1/").await, "192.168.1.1", BlockReason::Private);
    assert_blocked(f.fetch("http://172.20.0.1/").await, "172.20.0.1", BlockReason::Private);
    assert_blocked(f.fetch("http://100.64.0.1/").await, "100.64.0.1", BlockReason::SharedAddressSpace);
    assert_blocked(f.fetch("http://[fd00::1]/").await, "fd00::1", BlockReason::UniqueLocal);
    assert_blocked(f.fetch("http://[fe80::1]/").await, "fe80::1", BlockReason::LinkLocal);
    assert_blocked(f.fetch("http://0.0.0.0/").await, "0.0.0.0", BlockReason::Unspecified);
    assert_blocked(f.fetch("http://[::ffff:10.0.0.1]/").await, "::ffff:10.0.0.1", BlockReason::Private);
    let e: JobError = f.fetch("http://10.0.0.1/").await.expect_err("blocked").into();
    assert_eq!((e.kind(), e.disposition()), ("ssrf_blocked", Disposition::DeadLetter));
    assert!(e.message().contains("10.0.0.1") && e.message().contains("private"), "{}", e.message());
}

#[tokio::test]
async fn refuses_public_looking_name_resolving_to_private_address() {
    let srv = PageServer::start().await;
    let port = srv.addr.port();
    let f = fetcher(false)
        .with_resolver_overrides(HashMap::from([
            ("public.example.com".to_string(), vec![ip("127.0.0.1")]),
            ("intranet.example.com".to_string(), vec![ip("10.1.2.3")]),
        ]))
        .expect("fetcher");
    let r = f.fetch(&format!("http://public.example.com:{port}/article.html")).await;
    match r {
        Err(FetchError::Blocked { host, addr, reason: BlockReason::Loopback }) => {
            assert_eq!(host, "public.example.com");
            assert_eq!(addr, ip("127.0.0.1"));
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert_blocked(f.fetch("http://intranet.example.com/").await, "10.1.2.3", BlockReason::Private);
    assert!(srv.requests().is_empty());

    // Every resolved address is checked: one bad address refuses the whole answer, even when
    // another one (here loopback, allowed in this mode) would have worked.
    let f = fetcher(true)
        .with_resolver_overrides(HashMap::from([("mixed.example.com".to_string(), vec![ip("127.0.0.1"), ip("169.254.169.254")])]))
        .expect("fetcher");
    assert_blocked(f.fetch(&format!("http://mixed.example.com:{port}/article.html")).await, "169.254.169.254", BlockReason::CloudMetadata);
    assert!(srv.requests().is_empty());

    // Sanity: the same override to an allowed address is fetched (the map really is used).
    let f =
        fetcher(true).with_resolver_overrides(HashMap::from([("fine.example.com".to_string(), vec![ip("127.0.0.1")])])).expect("fetcher");
    let ok = f.fetch(&format!("http://fine.example.com:{port}/article.html")).await.expect("fetch");
    assert_eq!(ok.final_url.host_str(), Some("fine.example.com"));
}

#[tokio::test]
async fn refuses_redirects_into_private_addresses() {
    let srv = PageServer::start().await;
    // Only the fixture's exact address:port is exempt, so the first hop works while any other
    // loopback target stays refused.
    let f = fetcher(false).with_exempt_socket_addrs(vec![srv.addr]);
    let ok = f.fetch(&srv.url("/article.html")).await.expect("the exempt first hop works");
    assert_eq!(ok.status, 200);

    let is_block = |want: BlockReason| move |e: &FetchError| matches!(e, FetchError::Blocked { reason, .. } if *reason == want);
    assert_redirect_blocked(f.fetch(&srv.url("/redirect/loopback")).await, is_block(BlockReason::Loopback));
    assert_redirect_blocked(f.fetch(&srv.url("/redirect/metadata")).await, is_block(BlockReason::CloudMetadata));
    assert_redirect_blocked(f.fetch(&srv.url("/redirect/ula")).await, is_block(BlockReason::UniqueLocal));
    // A redirect to a *name* that resolves to loopback is refused by the resolver check.
    assert_redirect_blocked(f.fetch(&srv.url("/redirect/localhost")).await, is_block(BlockReason::Loopback));
    assert_redirect_blocked(f.fetch(&srv.url("/redirect/file")).await, |e| matches!(e, FetchError::Scheme(s) if s == "file"));
    // The redirect targets were never requested from the fixture (same server, other host name).
    assert_eq!(srv.requests().iter().filter(|p| p.as_str() == "/article.html").count(), 1);

    // Metadata stays refused on a redirect even when private networks are allowed.
    assert_redirect_blocked(fetcher(true).fetch(&srv.url("/redirect/metadata")).await, is_block(BlockReason::CloudMetadata));
}

#[tokio::test]
async fn refuses_non_http_schemes() {
    let f = fetcher(true);
    for (url, scheme) in [
        ("file:///etc/passwd", "file"),
        ("ftp://ftp.example.com/file", "ftp"),
        ("gopher://example.com/", "gopher"),
        ("data:text/html,<p>x</p>", "data"),
    ] {
        match f.fetch(url).await {
            Err(FetchError::Scheme(s)) => assert_eq!(s, scheme),
            other => panic!("{url}: expected Scheme error, got {other:?}"),
        }
    }
    let e: JobError = f.fetch("file:///etc/passwd").await.expect_err("refused").into();
    assert_eq!(e.disposition(), Disposition::DeadLetter);
    assert!(matches!(f.fetch("not a url").await, Err(FetchError::InvalidUrl(_))));
    assert!(matches!(f.fetch("http://user:pw@example.com/").await, Err(FetchError::InvalidUrl(_))));
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn caps_body_size() {
    let srv = PageServer::start().await;
    let r = fetcher(true).fetch(&srv.url("/huge")).await;
    assert_eq!(r.expect_err("too large"), FetchError::BodyTooLarge { limit: 1024 * 1024 });
    let big = Fetcher::new(&FetchSettings { max_body_bytes: 4 * 1024 * 1024, ..settings(true) }).expect("fetcher");
    let ok = big.fetch(&srv.url("/huge")).await.expect("fits");
    assert_eq!(ok.bytes, pages::HUGE_BYTES);
    let e: JobError = FetchError::BodyTooLarge { limit: 1 }.into();
    assert_eq!((e.kind(), e.disposition()), ("body_too_large", Disposition::DeadLetter));
}

#[tokio::test]
async fn refuses_gzip_bomb_by_decompressed_size() {
    let srv = PageServer::start().await;
    // The compressed body is far below the cap: only the decompressed count can refuse it.
    assert!(pages::gzip_bomb().len() < 256 * 1024, "bomb is {} bytes compressed", pages::gzip_bomb().len());
    let started = Instant::now();
    let r = fetcher(true).fetch(&srv.url("/gzip-bomb")).await;
    assert_eq!(r.expect_err("bomb refused"), FetchError::BodyTooLarge { limit: 1024 * 1024 });
    assert!(started.elapsed() < Duration::from_secs(5));
    // With a cap above its size it is decompressed and counted in full (so decoding is on).
    let big = Fetcher::new(&FetchSettings { max_body_bytes: 32 * 1024 * 1024, ..settings(true) }).expect("fetcher");
    let ok = big.fetch(&srv.url("/gzip-bomb")).await.expect("fits");
    assert!(ok.bytes > pages::BOMB_BYTES, "{}", ok.bytes);
}

#[tokio::test]
async fn total_timeout_stops_a_slow_drip() {
    let srv = PageServer::start().await;
    let f = Fetcher::new(&FetchSettings { total_timeout_secs: 1, ..settings(true) }).expect("fetcher");
    let started = Instant::now();
    let r = f.fetch(&srv.url("/drip")).await;
    assert_eq!(r.expect_err("timeout"), FetchError::Timeout { secs: 1 });
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "took {took:?}");
    // A short drip inside the limit is read whole.
    let f = Fetcher::new(&FetchSettings { total_timeout_secs: 4, ..settings(true) }).expect("fetcher");
    let ok = f.fetch(&srv.url("/drip-short")).await.expect("short drip");
    assert_eq!(ok.body, "xxxxx");
    let e: JobError = FetchError::Timeout { secs: 1 }.into();
    assert_eq!((e.kind(), e.disposition()), ("fetch_timeout", Disposition::Retry));
}

#[tokio::test]
async fn total_timeout_when_server_never_answers() {
    let (addr, task) = pages::silent_server().await;
    let f = Fetcher::new(&FetchSettings { total_timeout_secs: 1, ..settings(true) }).expect("fetcher");
    let started = Instant::now();
    let r = f.fetch(&format!("http://{addr}/")).await;
    assert!(matches!(r, Err(FetchError::Timeout { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    task.abort();
}

#[tokio::test]
async fn connect_timeout_when_listener_never_accepts() {
    let Some((_listener, _fill, addr)) = pages::saturated_listener().await else {
        panic!("could not saturate a loopback listener's accept queue on this kernel");
    };
    let f = Fetcher::new(&FetchSettings { connect_timeout_ms: 300, total_timeout_secs: 10, ..settings(true) }).expect("fetcher");
    let started = Instant::now();
    let r = f.fetch(&format!("http://{addr}/")).await;
    assert_eq!(r.expect_err("connect timeout"), FetchError::ConnectTimeout { ms: 300 });
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn follows_redirects_up_to_the_limit() {
    let srv = PageServer::start().await;
    let f = fetcher(true); // max_redirects = 3
    let ok = f.fetch(&srv.url("/redirect/chain/3")).await.expect("3 hops allowed");
    assert_eq!(ok.final_url.path(), "/redirect/chain/0");
    assert!(ok.body.contains("end of chain"));
    assert_eq!(f.fetch(&srv.url("/redirect/chain/4")).await.expect_err("4 hops"), FetchError::TooManyRedirects { max: 3 });
    let started = Instant::now();
    assert_eq!(f.fetch(&srv.url("/redirect/loop")).await.expect_err("loop"), FetchError::TooManyRedirects { max: 3 });
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(srv.requests().iter().filter(|p| p.as_str() == "/redirect/loop").count(), 4);
    let e: JobError = FetchError::TooManyRedirects { max: 3 }.into();
    assert_eq!((e.kind(), e.disposition()), ("too_many_redirects", Disposition::DeadLetter));
}

#[tokio::test]
async fn checks_content_type_and_status() {
    let srv = PageServer::start().await;
    let f = fetcher(true);
    assert_eq!(f.fetch(&srv.url("/wrong-type")).await.expect_err("binary"), FetchError::ContentType("application/octet-stream".into()));
    assert_eq!(f.fetch(&srv.url("/image")).await.expect_err("image"), FetchError::ContentType("image/png".into()));
    let sniffed = f.fetch(&srv.url("/no-type-html")).await.expect("html-looking body accepted");
    assert_eq!(sniffed.content_type, "text/html");
    assert_eq!(f.fetch(&srv.url("/no-type-binary")).await.expect_err("untyped binary"), FetchError::ContentType("(missing)".into()));
    let text = f.fetch(&srv.url("/text")).await.expect("text/plain");
    assert_eq!(text.content_type, "text/plain");

    let e: JobError = f.fetch(&srv.url("/status/404")).await.expect_err("404").into();
    assert_eq!((e.kind(), e.disposition()), ("http_4xx", Disposition::DeadLetter));
    let e: JobError = f.fetch(&srv.url("/status/503")).await.expect_err("503").into();
    assert_eq!((e.kind(), e.disposition()), ("http_5xx", Disposition::Retry));
    let e: JobError = f.fetch(&srv.url("/rate-limited")).await.expect_err("429").into();
    assert!(matches!(e, JobError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)), "{e:?}");
    let e: JobError = FetchError::ContentType("image/png".into()).into();
    assert_eq!((e.kind(), e.disposition()), ("unsupported_content_type", Disposition::DeadLetter));

    // Nothing listens on the port: a transient connection error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let e: JobError = f.fetch(&format!("http://{closed}/")).await.expect_err("refused").into();
    assert_eq!((e.kind(), e.disposition()), ("fetch_connect", Disposition::Retry));
}

#[tokio::test]
async fn decodes_declared_charsets() {
    let srv = PageServer::start().await;
    let f = fetcher(true);
    let latin1 = f.fetch(&srv.url("/latin1")).await.expect("latin1");
    assert!(latin1.body.contains("Café crème £"), "{}", latin1.body);
    let meta = f.fetch(&srv.url("/meta-charset")).await.expect("meta charset");
    assert!(meta.body.contains("\u{201c}quoted\u{201d} €"), "{}", meta.body);
    assert!(process(&latin1.body, Some(&latin1.final_url)).markdown.contains("Café crème £"));
}

#[tokio::test]
async fn filters_caller_headers_and_sends_user_agent() {
    let srv = PageServer::start().await;
    let supplied = [
        ("Cookie", "session=secret"),
        ("Host", "evil.example"),
        ("User-Agent", "Impersonator/1.0"),
        ("Connection", "keep-alive, x-smuggle"),
        ("Transfer-Encoding", "chunked"),
        ("Accept-Language", "fr-FR"),
    ];
    let f = fetcher(true);
    let got = f.fetch_with_headers(&srv.url("/headers"), &filter_headers(supplied, false)).await.expect("headers");
    let body = got.body.to_ascii_lowercase();
    assert!(body.contains("accept-language: fr-fr"), "{body}");
    assert!(body.contains(&format!("user-agent: {}", FetchSettings::default().user_agent.to_ascii_lowercase())), "{body}");
    assert!(body.contains(&format!("host: {}", srv.addr)), "{body}");
    assert!(!body.contains("secret") && !body.contains("impersonator") && !body.contains("evil.example"), "{body}");
    assert!(!body.contains("transfer-encoding") && !body.contains("x-smuggle"), "{body}");

    let cookies = Fetcher::new(&FetchSettings { allow_cookies: true, ..settings(true) }).expect("fetcher");
    let got = cookies.fetch_with_headers(&srv.url("/headers"), &filter_headers(supplied, true)).await.expect("headers");
    assert!(got.body.contains("cookie: session=secret"), "{}", got.body);
}

// ---------------------------------------------------------------- page processing

#[tokio::test]
async fn extracts_markdown_metadata_json_ld_and_links() {
    let srv = PageServer::start().await;
    let fetched = fetcher(true).fetch(&srv.url("/article.html")).await.expect("article");
    let page = process(&fetched.body, Some(&fetched.final_url));
    let md = &page.markdown;
    let origin = format!("http://{}", srv.addr);

    assert!(md.starts_with("# Tidal Energy Report"), "{md}");
    assert!(md.contains("**42 GWh**"), "{md}");
    assert!(md.contains("## Sites"), "{md}");
    assert!(md.contains("- Pentland Firth") && md.contains("- Bay of Fundy"), "{md}");
    assert!(md.contains(&format!("[methodology]({origin}/details.html#method)")), "{md}");
    assert!(md.contains("[raw data](https://data.example.org/tidal.csv)"), "{md}");
    assert!(md.contains("Subscribe below"), "{md}");
    for marker in [
        "SITE_HEADER_MARKER",
        "NAV_MARKER",
        "TRACKING_SCRIPT_MARKER",
        "STYLE_MARKER",
        "HIDDEN_INPUT_MARKER",
        "ASIDE_MARKER",
        "FOOTER_MARKER",
        "NOSCRIPT_MARKER",
        "Related story",
    ] {
        assert!(!md.contains(marker), "{marker} leaked into markdown:\n{md}");
    }

    let m = &page.metadata;
    assert_eq!(m.title.as_deref(), Some("Tidal Energy Report"));
    assert_eq!(m.description.as_deref(), Some("How tidal turbines performed in 2024."));
    assert_eq!(m.canonical_url.as_deref(), Some(format!("{origin}/reports/tidal-2024").as_str()));
    assert_eq!(m.language.as_deref(), Some("en-GB"));
    assert_eq!(m.open_graph.get("og:title").map(String::as_str), Some("Tidal Energy Report (OG)"));
    assert_eq!(m.open_graph.get("og:image").map(String::as_str), Some("https://cdn.example.org/tidal.png"));
    assert_eq!(m.open_graph.get("og:type").map(String::as_str), Some("article"));
    assert_eq!(m.twitter.get("twitter:card").map(String::as_str), Some("summary_large_image"));
    assert_eq!(m.twitter.get("twitter:site").map(String::as_str), Some("@tidalnews"));
    // Two valid blocks (one an array of two), one invalid block skipped.
    let types: Vec<&str> = m.json_ld.iter().filter_map(|v| v["@type"].as_str()).collect();
    assert_eq!(types, vec!["Article", "BreadcrumbList", "Organization"]);
    assert_eq!(m.json_ld[0]["author"]["name"], "Ada Reyes");

    assert_eq!(
        page.links,
        vec![
            format!("{origin}/"),
            format!("{origin}/news"),
            format!("{origin}/about"),
            format!("{origin}/details.html"),
            "https://data.example.org/tidal.csv".to_string(),
            format!("{origin}/related/1"),
        ]
    );
    let json = serde_json::to_value(&page).expect("serialize");
    assert_eq!(json["metadata"]["open_graph"]["og:type"], "article");
}

#[tokio::test]
async fn resolves_links_against_base_href() {
    let srv = PageServer::start().await;
    let fetched = fetcher(true).fetch(&srv.url("/docs/base.html")).await.expect("base page");
    let page = process(&fetched.body, Some(&fetched.final_url));
    let origin = format!("http://{}", srv.addr);
    assert_eq!(
        page.links,
        vec![
            format!("{origin}/docs/v2/intro.html"),
            format!("{origin}/docs/v1/old.html"),
            format!("{origin}/root.html"),
            "http://other.example.net/x".to_string(),
        ]
    );
    assert!(page.markdown.contains(&format!("{origin}/docs/v2/img/diagram.png")), "{}", page.markdown);
}

#[test]
fn body_fallback_drops_chrome() {
    let html = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pages/body_only.html")).expect("fixture");
    let page = process(&html, None);
    assert!(page.markdown.starts_with("# Plain heading"), "{}", page.markdown);
    assert!(page.markdown.contains("*emphasis*") && page.markdown.contains("alpha"), "{}", page.markdown);
    for marker in ["BODY_HEADER_MARKER", "BODY_NAV_MARKER", "BODY_FOOTER_MARKER", "BODY_SCRIPT_MARKER"] {
        assert!(!page.markdown.contains(marker), "{marker}:\n{}", page.markdown);
    }
    assert_eq!(page.metadata.title.as_deref(), Some("Plain page"));
}

#[test]
fn links_without_a_base_keep_only_absolute_ones() {
    let page = process(r#"<p><a href="/rel">r</a> <a href="https://x.example/a#f">a</a> <a href="HTTPS://X.EXAMPLE/a">dup</a></p>"#, None);
    assert_eq!(page.links, vec!["https://x.example/a"]);
    // Garbage in is not fatal.
    let junk = process("<<<>>> <a href=\"http://[::1\">broken</a> <script type=\"application/ld+json\">{</script>", None);
    assert!(junk.links.is_empty() && junk.metadata.json_ld.is_empty());
    let t = text_page("just words");
    assert_eq!(t.markdown, "just words");
}

#[tokio::test]
async fn truncates_to_a_token_budget_with_a_note() {
    let srv = PageServer::start().await;
    let fetched = fetcher(true).fetch(&srv.url("/article.html")).await.expect("article");
    let md = process(&fetched.body, Some(&fetched.final_url)).markdown;
    let total = count_tokens(&md);
    assert!(total > 60, "{total}");
    let (cut, was_cut) = truncate_to_tokens(&md, 40);
    assert!(was_cut);
    assert!(count_tokens(&cut) <= 40, "{} tokens:\n{cut}", count_tokens(&cut));
    assert!(cut.starts_with("# Tidal Energy Report"));
    assert!(cut.ends_with(&format!("of {total} tokens]")), "{cut}");
    assert!(cut.contains("[content truncated to"), "{cut}");
    let (same, was_cut) = truncate_to_tokens(&md, total);
    assert!(!was_cut);
    assert_eq!(same, md);
}

// ---------------------------------------------------------------- crawl

fn crawl_fetcher() -> Fetcher {
    // Look-alike and off-host names all resolve to the fixture: if scope checks failed, the
    // fixture would serve them and the crawl output would show it.
    let lo = vec![ip("127.0.0.1")];
    fetcher(true)
        .with_resolver_overrides(HashMap::from([
            ("example.com".to_string(), lo.clone()),
            ("127.0.0.1.evil.test".to_string(), lo.clone()),
            ("evil127.0.0.1.test".to_string(), lo.clone()),
            ("evil.test".to_string(), lo.clone()),
        ]))
        .expect("fetcher")
}

fn quick() -> CrawlSettings {
    CrawlSettings { politeness_delay_ms: 0, respect_robots: true }
}

fn paths(pages: &[CrawledPage]) -> Vec<(String, u32, bool)> {
    pages
        .iter()
        .map(|p| {
            let u = url::Url::parse(&p.url).expect("url");
            (u.path().to_string(), p.depth, p.error.is_none())
        })
        .collect()
}

#[tokio::test]
async fn crawl_stays_in_scope_and_respects_robots() {
    let srv = PageServer::start().await;
    let origin = format!("http://{}", srv.addr);
    let pages = crawl(&crawl_fetcher(), &srv.url("/site/"), 100, 10, &quick()).await.expect("crawl");
    assert_eq!(
        paths(&pages),
        vec![
            ("/site/".into(), 0, true),
            ("/site/a".into(), 1, true),
            ("/site/b".into(), 1, true),
            ("/site/a/deep".into(), 2, true),
            ("/site/private/open".into(), 2, true),
            ("/site/missing".into(), 2, false),
            ("/site/a/deep/deeper".into(), 3, true),
            ("/site/a/deep/deeper/deepest".into(), 4, true),
        ]
    );
    for p in &pages {
        assert!(p.url.starts_with(&format!("{origin}/")), "out of scope: {}", p.url);
    }
    let missing = pages.iter().find(|p| p.url.ends_with("/site/missing")).expect("missing page noted");
    assert_eq!(missing.error.as_ref().map(|e| e.kind.as_str()), Some("http_4xx"));
    assert_eq!(pages[0].page.metadata.title.as_deref(), Some("Site home"));
    assert!(pages[1].page.markdown.contains("Depth one."));

    let reqs = srv.requests();
    assert_eq!(reqs.iter().filter(|p| p.as_str() == "/robots.txt").count(), 1, "{reqs:?}");
    assert!(!reqs.iter().any(|p| p.contains("secret") || p.contains("offsite")), "{reqs:?}");
    // Each page requested once: no look-alike host reached the fixture a second time.
    let mut sorted = reqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), reqs.len(), "a page was fetched twice: {reqs:?}");
    let json = serde_json::to_value(&pages).expect("serialize");
    assert_eq!(json[0]["depth"], 0);
}

#[tokio::test]
async fn crawl_stops_at_max_depth_and_max_pages() {
    let srv = PageServer::start().await;
    let f = crawl_fetcher();
    let depth2 = crawl(&f, &srv.url("/site/"), 100, 2, &quick()).await.expect("crawl");
    assert!(depth2.iter().all(|p| p.depth <= 2));
    assert!(depth2.iter().any(|p| p.url.ends_with("/site/a/deep")));
    assert!(!srv.requests().iter().any(|p| p.ends_with("/deeper")), "{:?}", srv.requests());

    let depth0 = crawl(&f, &srv.url("/site/"), 100, 0, &quick()).await.expect("crawl");
    assert_eq!(paths(&depth0), vec![("/site/".into(), 0, true)]);

    let three = crawl(&f, &srv.url("/site/"), 3, 10, &quick()).await.expect("crawl");
    assert_eq!(paths(&three), vec![("/site/".into(), 0, true), ("/site/a".into(), 1, true), ("/site/b".into(), 1, true)]);
}

#[tokio::test]
async fn crawl_without_robots_fetches_disallowed_pages() {
    let srv = PageServer::start().await;
    let settings = CrawlSettings { politeness_delay_ms: 0, respect_robots: false };
    let pages = crawl(&crawl_fetcher(), &srv.url("/site/"), 100, 10, &settings).await.expect("crawl");
    assert!(pages.iter().any(|p| p.url.ends_with("/site/private/secret") && p.error.is_none()));
    assert!(!srv.requests().iter().any(|p| p == "/robots.txt"));
}

#[tokio::test]
async fn crawl_waits_between_requests() {
    let srv = PageServer::start().await;
    let settings = CrawlSettings { politeness_delay_ms: 150, respect_robots: true };
    let pages = crawl(&crawl_fetcher(), &srv.url("/site/"), 3, 10, &settings).await.expect("crawl");
    assert_eq!(pages.len(), 3);
    let times: Vec<Instant> = srv.request_times().into_iter().map(|(_, t)| t).collect();
    assert_eq!(times.len(), 4, "robots.txt + 3 pages");
    for w in times.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(gap >= Duration::from_millis(140), "gap {gap:?}");
    }
}

#[tokio::test]
async fn crawl_fails_when_the_start_page_fails() {
    let srv = PageServer::start().await;
    let e = crawl(&crawl_fetcher(), &srv.url("/site/missing"), 10, 2, &quick()).await.expect_err("404 start");
    assert_eq!((e.kind(), e.disposition()), ("http_4xx", Disposition::DeadLetter));

    let e = crawl(&fetcher(false), &srv.url("/site/"), 10, 2, &quick()).await.expect_err("blocked start");
    assert_eq!(e.kind(), "ssrf_blocked");
    assert!(srv.requests().iter().all(|p| p != "/site/"));

    let e = crawl(&crawl_fetcher(), "file:///etc/passwd", 10, 2, &quick()).await.expect_err("file start");
    assert_eq!(e.disposition(), Disposition::DeadLetter);

    let e = crawl(&crawl_fetcher(), &srv.url("/site/private/secret"), 10, 2, &quick()).await.expect_err("robots");
    assert_eq!(e.kind(), "robots_disallowed");
}

/// Runs `process` on a thread with tokio's default worker stack (2 MiB), as the worker would.
fn process_on_small_stack(html: String) -> atlas_codex::page::Page {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || process(&html, None))
        .expect("spawn")
        .join()
        .expect("process must not overflow the stack")
}

#[test]
fn hostile_nesting_is_reduced_to_text_quickly() {
    for open in ["<div>", "<div/>", "<span><b>"] {
        let html = format!(
            "<html><head><title>Deep</title></head><body><main>{}<a href=\"https://x.example/deep\">deep text</a></main></body></html>",
            open.repeat(50_000)
        );
        let started = Instant::now();
        let page = process_on_small_stack(html);
        assert!(started.elapsed() < Duration::from_secs(10), "{open}: {:?}", started.elapsed());
        assert!(page.markdown.contains("deep text"), "{open}: {}", page.markdown);
        assert_eq!(page.links, vec!["https://x.example/deep"]);
        assert_eq!(page.metadata.title.as_deref(), Some("Deep"));
    }
}

#[test]
fn ordinary_nesting_and_svg_keep_the_full_conversion() {
    // Just under the limit, on a small stack: converted as a tree (the heading survives).
    let depth = atlas_codex::page::MAX_NESTING - 10;
    let html =
        format!("<html><body><main><h1>Title</h1>{}<p>inner</p>{}</main></body></html>", "<div>".repeat(depth), "</div>".repeat(depth));
    let page = process_on_small_stack(html);
    assert!(page.markdown.starts_with("# Title") && page.markdown.contains("inner"), "{}", page.markdown);
    // Many self-closing SVG children and unclosed <p>/<li> are siblings, not nesting.
    let html = format!(
        "<html><body><main><h1>Icons</h1><svg>{}</svg>{}<ul>{}</ul></main></body></html>",
        "<path d=\"M0 0\"/>".repeat(2_000),
        "<p>para".repeat(1_000),
        "<li>item".repeat(1_000)
    );
    let page = process_on_small_stack(html);
    assert!(page.markdown.starts_with("# Icons"), "{}", &page.markdown[..page.markdown.len().min(200)]);
}

#[test]
fn script_carrying_link_and_image_targets_never_reach_the_markdown_or_the_links() {
    let html = r#"<html><body><article><h1>Offer</h1>
      <p>Read <a href="javascript:alert(document.cookie)">the terms</a> and
      <a href=" JaVa&#x09;ScRiPt:alert(1)">the fine print</a>, or
      <a href="vbscript:msgbox(1)">this</a>, <a href="data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;">that</a>,
      <a href="livescript:x">old</a>. Mail <a href="mailto:sales@example.com">sales</a>;
      see <a href="/pricing">pricing</a> and <a href="https://example.org/about">about</a>.</p>
      <img src="data:image/svg+xml;base64,PHN2Zy8+" alt="pixel"><img src="javascript:alert(2)" alt="bad">
      <img src="/img/product.png" alt="product">
    </article></body></html>"#;
    for base in [None, Some(url::Url::parse("https://shop.example.com/offer").unwrap())] {
        let page = process(html, base.as_ref());
        let md = page.markdown.to_ascii_lowercase();
        for bad in ["javascript", "vbscript", "livescript", "data:"] {
            assert!(!md.contains(bad), "{bad} reached the markdown (base {base:?}):\n{}", page.markdown);
            assert!(page.links.iter().all(|l| !l.to_ascii_lowercase().contains(bad)), "{bad} in links: {:?}", page.links);
        }
        for text in ["the terms", "the fine print", "this", "that", "old"] {
            assert!(page.markdown.contains(text), "link text `{text}` kept:\n{}", page.markdown);
        }
        assert!(page.markdown.contains("mailto:sales@example.com"), "{}", page.markdown);
        assert!(page.markdown.contains("product"), "{}", page.markdown);
        if base.is_some() {
            assert!(page.markdown.contains("(https://shop.example.com/pricing)"), "{}", page.markdown);
            assert!(page.markdown.contains("https://shop.example.com/img/product.png"), "{}", page.markdown);
        }
    }
}

#[test]
fn a_page_of_many_links_keeps_at_most_max_links_of_them() {
    let many: String = (0..5_000).map(|i| format!("<a href=\"https://e.com/p/{i}\">p{i}</a> ")).collect();
    let page = process(&format!("<html><body><p>{many}</p></body></html>"), None);
    assert_eq!(page.links.len(), atlas_codex::page::MAX_LINKS);
    assert_eq!(page.links[0], "https://e.com/p/0", "document order");
    let text: String = (0..5_000).map(|i| format!("see https://e.com/t/{i} ")).collect();
    assert_eq!(text_page(&text).links.len(), atlas_codex::page::MAX_LINKS);
}

/// A news-style page: the article among navigation, a related-stories block and a navbox.
fn article_page(extra_in_article: &str) -> String {
    let prose = "The harbour board met on Tuesday and agreed to rebuild the north pier before the winter storms arrive. ";
    let related: String = (1..=12).map(|i| format!("<li><a href=\"/story/{i}\">Other story number {i}</a></li>")).collect();
    format!(
        "<html><head><title>Pier to be rebuilt - Harbour News</title></head><body>\
         <nav><a href=\"/\">Home</a><a href=\"/news\">News</a></nav>\
         <div class=\"content\"><h1>Pier to be rebuilt</h1><p>{}</p><p>{}</p>{extra_in_article}\
         <table class=\"navbox\"><tr><td>{related}</td></tr></table></div>\
         <aside><h3>Most read</h3><ul>{related}</ul></aside><footer>Copyright</footer></body></html>",
        prose.repeat(6),
        prose.repeat(5)
    )
}

#[test]
fn the_main_content_keeps_tables_and_lists_and_drops_pixels_data_images_empty_links_and_link_blocks() {
    let extra = "<table><tr><th>Item</th><th>Cost</th></tr><tr><td>Pier</td><td>4 million</td></tr></table>\
                 <ul><li>Stage one: demolition</li><li>Stage two: piling</li></ul>\
                 <p><img src=\"https://track.example/p.gif\" width=\"1\" height=\"1\" alt=\"\">\
                 <a href=\"https://ads.example/x\"><img src=\"data:image/gif;base64,R0lGOD==\"></a>\
                 <a href=\"https://empty.example/\"> </a>Costs are shared.</p>";
    let page = process(&article_page(extra), Some(&url::Url::parse("https://news.example/pier").unwrap()));
    let md = &page.markdown;
    assert!(md.starts_with("# Pier to be rebuilt\n"), "the article's own title, without the site's name:\n{md}");
    assert_eq!(md.matches("Pier to be rebuilt").count(), 1, "the title once:\n{md}");
    assert!(md.contains("| Item | Cost |") && md.contains("| Pier | 4 million |"), "the table, unpadded:\n{md}");
    assert!(md.contains("- Stage one: demolition") && md.contains("- Stage two: piling"), "the list:\n{md}");
    assert!(md.contains("Costs are shared."));
    for gone in ["track.example", "data:", "ads.example", "empty.example", "Other story number", "Most read", "Copyright", "Home"] {
        assert!(!md.contains(gone), "`{gone}` reached the Markdown:\n{md}");
    }
    // The links are still the page's links (only the Markdown leaves the blocks out).
    assert!(page.links.iter().any(|l| l == "https://news.example/story/3"), "{:?}", page.links);
}

#[test]
fn a_page_that_is_a_list_of_links_keeps_its_links() {
    let items: String = (1..=30).map(|i| format!("<li><a href=\"/doc/{i}\">Chapter {i} of the manual</a></li>")).collect();
    let html = format!(
        "<html><head><title>Manual</title></head><body><main><h1>Manual</h1><p>The chapters.</p><ul>{items}</ul></main></body></html>"
    );
    let md = process(&html, None).markdown;
    for i in [1, 15, 30] {
        assert!(md.contains(&format!("Chapter {i} of the manual")), "chapter {i} kept:\n{md}");
    }
}

#[test]
fn tooltips_footnote_markers_and_a_table_of_contents_do_not_reach_the_markdown() {
    let contents = "<ul><li><a href=\"#history\">1 History</a></li><li><a href=\"#design\">2 Design</a></li>\
                    <li><a href=\"#works\">3 Works</a></li></ul>";
    let extra = format!(
        "{contents}<h2 id=\"history\">History</h2><p>The first pier stood for ninety years.<sup><a href=\"#note-1\">[1]</a></sup></p>\
         <button>Vote</button><div role=\"tooltip\">This answer is useful</div>\
         <p>Notes are cited<sup>2</sup> with the year.</p>"
    );
    let md = process(&article_page(&extra), None).markdown;
    assert!(md.contains("The first pier stood for ninety years."), "{md}");
    for gone in ["[1]", "note-1", "This answer is useful", "1 History", "2 Design"] {
        assert!(!md.contains(gone), "`{gone}` reached the Markdown:\n{md}");
    }
    assert!(md.contains("## History"), "the heading the contents pointed at stays:\n{md}");
    assert!(md.contains("cited2"), "a superscript that is no link to a note stays:\n{md}");
}

#[test]
fn a_shops_declared_product_description_is_added_once_when_readability_misses_it() {
    let description = "This hand-forged carbon steel pan heats evenly, keeps its seasoning and goes from the hob into the oven. ";
    let pitch = "Our pans are made in a small workshop by people who cook with them every day of the week. ";
    let html = format!(
        "<html><head><title>Steel pan - Shop</title></head><body>\
         <div class=\"product\"><h1>Steel pan</h1><p>{}</p><p>Price: 49 EUR</p></div>\
         <div class=\"shopping-tabs\"><div class=\"tab\"><div itemprop=\"description\"><p>{}</p></div></div></div>\
         </body></html>",
        pitch.repeat(6),
        description.repeat(3)
    );
    let md = process(&html, None).markdown;
    assert!(md.contains("Our pans are made"), "{md}");
    assert_eq!(md.matches("This hand-forged carbon steel pan").count(), 3, "the description, once (it repeats itself 3 times):\n{md}");
    // Already in the article: not added a second time.
    let inline = format!(
        "<html><head><title>Steel pan - Shop</title></head><body><article><h1>Steel pan</h1>\
         <div itemprop=\"description\"><p>{}</p></div><p>{}</p></article></body></html>",
        description.repeat(3),
        pitch.repeat(6)
    );
    let md = process(&inline, None).markdown;
    assert_eq!(md.matches("This hand-forged carbon steel pan").count(), 3, "{md}");
}

#[test]
fn a_page_of_more_than_max_elements_is_read_by_the_linear_scan_with_its_text_and_links() {
    let page_of = |items: usize| {
        let items: String = (0..items).map(|i| format!("<p>Item {i} <a href=\"/item/{i}\">product {i}</a></p>")).collect();
        format!(
            "<html><head><title>Catalogue</title><meta name=\"description\" content=\"All products\"></head>\
             <body><main><h1>Catalogue</h1>{items}</main></body></html>"
        )
    };
    let base = url::Url::parse("https://shop.example/").unwrap();
    // Two elements per item: just under the limit the page is a tree (metadata read) ...
    let under = process(&page_of(atlas_codex::page::MAX_ELEMENTS / 2 - 10), Some(&base));
    assert_eq!(under.metadata.description.as_deref(), Some("All products"));
    // ... over it, the scan: the text, the title and the links, but no tree (no metadata).
    let over = process(&page_of(atlas_codex::page::MAX_ELEMENTS / 2 + 10), Some(&base));
    assert_eq!(over.metadata.description, None, "read without a tree");
    assert_eq!(over.metadata.title.as_deref(), Some("Catalogue"));
    assert!(over.markdown.contains("Item 7 product 7"), "{}", &over.markdown[..over.markdown.len().min(300)]);
    assert_eq!(over.links.len(), atlas_codex::page::MAX_LINKS);
    assert_eq!(over.links[0], "https://shop.example/item/0");
}
