//! Breadth-first, same-origin crawls built on the guarded [`Fetcher`].
//!
//! Scope: a link is followed only if its scheme, host and port equal the start page's (after the
//! start URL's redirects): exact host match, so no look-alike (`example.com.evil.net`,
//! `evilexample.com`) and no subdomain widening. A page that redirects out of scope is skipped.
//!
//! Limits: `max_pages` (clamped to 1..=[`MAX_CRAWL_PAGES`]) counts every page fetched or tried,
//! failures included, so a site of broken links cannot make a crawl run long; `max_depth`
//! (clamped to [`MAX_CRAWL_DEPTH`]) is link distance from the start page (depth 0).
//!
//! Politeness: robots.txt is fetched once per origin and obeyed when `respect_robots` (groups for
//! `*` and for our bot's product token; `Allow`/`Disallow` prefix rules with `*` and `$`; longest
//! match wins, `Allow` wins ties). A robots.txt that is missing (4xx) or unusable allows
//! everything; one that cannot be fetched because of a transient error (5xx, timeout) fails the
//! crawl transiently (RFC 9309 says to assume full disallow, so retrying later is the honest
//! outcome). `Crawl-delay` is not read; `politeness_delay_ms` is waited between any two requests.
//!
//! Failures: a page that fails is kept as a [`CrawledPage`] with `error` set and an empty page;
//! if the start page fails, the crawl fails with that page's error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde::Serialize;
use url::Url;

use crate::error::{ErrorKind, JobError};
use crate::fetch::{FetchError, Fetched, Fetcher};
use crate::job::{MAX_CRAWL_DEPTH, MAX_CRAWL_PAGES};
use crate::page::{self, Page};
use crate::settings::CrawlSettings;

/// Why one page of a crawl has no content.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PageError {
    /// Stable reason (the [`JobError`] kind, e.g. `http_4xx`, or `out_of_scope`).
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
}

/// One page of a crawl's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrawledPage {
    /// The URL as discovered (absolute, no fragment); see `final_url` for redirects.
    pub url: String,
    /// The URL after redirects, when it differs from `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_url: Option<String>,
    /// Link distance from the start page (0 for the start page).
    pub depth: u32,
    /// The processed page (empty when `error` is set).
    pub page: Page,
    /// Set when the page could not be fetched or processed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<PageError>,
}

/// robots.txt rules for one user agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Robots {
    /// (allow, pattern) rules of the group that applies to us.
    rules: Vec<(bool, String)>,
}

impl Robots {
    /// Rules that allow everything (no robots.txt, or an unusable one).
    pub fn allow_all() -> Robots {
        Robots::default()
    }

    /// Parses robots.txt for `agent` (a product token such as `AtlasCodexBot`, matched
    /// case-insensitively). The groups naming the agent apply if any exist, else the `*` groups.
    pub fn parse(text: &str, agent: &str) -> Robots {
        let agent = agent.trim().to_ascii_lowercase();
        let mut ours: Vec<(bool, String)> = Vec::new();
        let mut star: Vec<(bool, String)> = Vec::new();
        let mut found_ours = false;
        // The agents of the group being read, and whether its rules started (a new
        // `User-agent` line after rules starts a new group).
        let mut group_agents: Vec<String> = Vec::new();
        let mut in_rules = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((key, value)) = line.split_once(':') else { continue };
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            match key.as_str() {
                "user-agent" => {
                    if in_rules {
                        group_agents.clear();
                        in_rules = false;
                    }
                    group_agents.push(value.to_ascii_lowercase());
                }
                "allow" | "disallow" => {
                    in_rules = true;
                    if value.is_empty() {
                        continue; // `Disallow:` with no path allows everything: no rule.
                    }
                    let rule = (key == "allow", value.to_string());
                    let is_ours = !agent.is_empty() && group_agents.iter().any(|a| a == &agent);
                    if is_ours {
                        found_ours = true;
                        ours.push(rule.clone());
                    }
                    if group_agents.iter().any(|a| a == "*") {
                        star.push(rule);
                    }
                }
                _ => {}
            }
            if key == "user-agent" && !agent.is_empty() && value.eq_ignore_ascii_case(&agent) {
                found_ours = true;
            }
        }
        Robots { rules: if found_ours { ours } else { star } }
    }

    /// Whether `url`'s path (with query) may be fetched.
    pub fn allowed(&self, url: &Url) -> bool {
        let mut target = url.path().to_string();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let mut best: Option<(usize, bool)> = None;
        for (allow, pattern) in &self.rules {
            if let Some(len) = match_len(pattern, &target) {
                let better = match best {
                    None => true,
                    Some((l, a)) => len > l || (len == l && *allow && !a),
                };
                if better {
                    best = Some((len, *allow));
                }
            }
        }
        best.map(|(_, allow)| allow).unwrap_or(true)
    }
}

/// If robots `pattern` matches `path` from its start, the pattern's length (its specificity).
fn match_len(pattern: &str, path: &str) -> Option<usize> {
    let (pat, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    // Percent-encoding differences are ignored for the common case by comparing as written.
    if matches_wild(pat.as_bytes(), path.as_bytes(), anchored) {
        Some(pattern.len())
    } else {
        None
    }
}

/// Prefix match with `*` wildcards; `anchored` requires the match to reach the end of `s`.
fn matches_wild(p: &[u8], s: &[u8], anchored: bool) -> bool {
    // Iterative glob matching with backtracking on the last `*` (linear-ish, no recursion).
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi == p.len() {
            if !anchored || si == s.len() {
                return true;
            }
        } else if p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
            continue;
        } else if si < s.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
            continue;
        }
        match star {
            Some((sp, ss)) if ss < s.len() => {
                star = Some((sp, ss + 1));
                pi = sp + 1;
                si = ss + 1;
            }
            _ => return false,
        }
    }
}

/// `scheme://host:port` with the port made explicit: the crawl's unit of scope.
fn origin_key(u: &Url) -> Option<(String, String, u16)> {
    Some((u.scheme().to_string(), u.host_str()?.to_ascii_lowercase(), u.port_or_known_default()?))
}

fn normalize(mut u: Url) -> Url {
    u.set_fragment(None);
    u
}

fn page_of(f: &Fetched) -> Page {
    if f.content_type.contains("html") {
        page::process(&f.body, Some(&f.final_url))
    } else {
        page::text_page(&f.body)
    }
}

struct Crawler<'a> {
    fetcher: &'a Fetcher,
    settings: &'a CrawlSettings,
    robots: HashMap<(String, String, u16), Robots>,
    requests_made: u32,
}

impl Crawler<'_> {
    async fn polite_fetch(&mut self, url: &str) -> Result<Fetched, FetchError> {
        if self.requests_made > 0 && self.settings.politeness_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.politeness_delay_ms)).await;
        }
        self.requests_made += 1;
        self.fetcher.fetch(url).await
    }

    /// Whether robots.txt lets us fetch `url` (fetching robots.txt once per origin).
    async fn allowed(&mut self, url: &Url) -> Result<bool, JobError> {
        if !self.settings.respect_robots {
            return Ok(true);
        }
        let Some(key) = origin_key(url) else { return Ok(false) };
        if !self.robots.contains_key(&key) {
            let mut robots_url = url.clone();
            robots_url.set_path("/robots.txt");
            robots_url.set_query(None);
            robots_url.set_fragment(None);
            let rules = match self.polite_fetch(robots_url.as_str()).await {
                Ok(f) => Robots::parse(&f.body, self.fetcher.bot_name()),
                Err(e) if e.is_transient() => {
                    return Err(JobError::transient(
                        ErrorKind::RobotsUnavailable,
                        format!("robots.txt for {} could not be fetched: {e}", url.origin().ascii_serialization()),
                    ))
                }
                Err(_) => Robots::allow_all(),
            };
            self.robots.insert(key.clone(), rules);
        }
        Ok(self.robots.get(&key).map(|r| r.allowed(url)).unwrap_or(true))
    }
}

/// Crawls from `start`, breadth-first within the start page's origin; see the module doc for
/// scope, limits, robots.txt and failures. Returns pages in the order they were fetched.
pub async fn crawl(
    fetcher: &Fetcher,
    start: &str,
    max_pages: u32,
    max_depth: u32,
    settings: &CrawlSettings,
) -> Result<Vec<CrawledPage>, JobError> {
    let max_pages = max_pages.clamp(1, MAX_CRAWL_PAGES);
    let max_depth = max_depth.min(MAX_CRAWL_DEPTH);
    let start_url = Url::parse(start.trim()).map_err(|e| JobError::from(FetchError::InvalidUrl(e.to_string())))?;
    if !matches!(start_url.scheme(), "http" | "https") {
        return Err(FetchError::Scheme(start_url.scheme().to_string()).into());
    }
    let start_url = normalize(start_url);
    let mut c = Crawler { fetcher, settings, robots: HashMap::new(), requests_made: 0 };

    if !c.allowed(&start_url).await? {
        return Err(JobError::permanent(ErrorKind::RobotsDisallowed, "robots.txt disallows the start page".to_string()));
    }
    let first = c.polite_fetch(start_url.as_str()).await.map_err(JobError::from)?;
    let scope_url = normalize(first.final_url.clone());
    let Some(scope) = origin_key(&scope_url) else {
        return Err(FetchError::InvalidUrl("start page has no host".into()).into());
    };
    let mut f = Frontier { scope, max_depth, seen: HashSet::new(), queue: VecDeque::new(), out: Vec::new() };
    f.seen.insert(start_url.to_string());
    f.seen.insert(scope_url.to_string());
    f.record(&start_url, Ok(first), 0);
    let mut attempted: u32 = 1;

    while attempted < max_pages {
        let Some((url, depth)) = f.queue.pop_front() else { break };
        match c.allowed(&url).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                f.record(&url, Err(PageError { kind: e.kind().to_string(), message: e.message().to_string() }), depth);
                attempted += 1;
                continue;
            }
        }
        attempted += 1;
        let result = match c.polite_fetch(url.as_str()).await {
            Ok(fetched) => {
                let final_key = origin_key(&fetched.final_url);
                if final_key.as_ref() != Some(&f.scope) {
                    Err(PageError {
                        kind: ErrorKind::OutOfScope.as_str().into(),
                        message: format!("redirected off the crawl's origin to {}", fetched.final_url.origin().ascii_serialization()),
                    })
                } else if !f.seen.insert(normalize(fetched.final_url.clone()).to_string()) && fetched.final_url.as_str() != url.as_str() {
                    // Redirected to a page already crawled or queued: nothing new to record.
                    continue;
                } else {
                    Ok(fetched)
                }
            }
            Err(e) => {
                let e = JobError::from(e);
                Err(PageError { kind: e.kind().to_string(), message: e.message().to_string() })
            }
        };
        f.record(&url, result, depth);
    }
    Ok(f.out)
}

/// What a crawl has seen, what it still has to fetch, and what it has fetched.
struct Frontier {
    /// The crawl's origin; links elsewhere are not followed.
    scope: (String, String, u16),
    /// Links on pages at this depth are not followed.
    max_depth: u32,
    /// Every URL queued or crawled (normalised).
    seen: HashSet<String>,
    /// URLs to fetch, breadth-first, with their depth.
    queue: VecDeque<(Url, u32)>,
    /// Pages in the order they were fetched.
    out: Vec<CrawledPage>,
}

impl Frontier {
    /// Records a fetched page (queueing its in-scope links) or a page that failed.
    fn record(&mut self, url: &Url, fetched: Result<Fetched, PageError>, depth: u32) {
        match fetched {
            Ok(f) => {
                let page = page_of(&f);
                if depth < self.max_depth {
                    for link in &page.links {
                        let Ok(u) = Url::parse(link) else { continue };
                        let u = normalize(u);
                        if origin_key(&u).as_ref() != Some(&self.scope) {
                            continue;
                        }
                        if self.seen.insert(u.to_string()) {
                            self.queue.push_back((u, depth + 1));
                        }
                    }
                }
                let final_url = normalize(f.final_url.clone());
                let final_url = (final_url.as_str() != url.as_str()).then(|| final_url.to_string());
                self.out.push(CrawledPage { url: url.to_string(), final_url, depth, page, error: None });
            }
            Err(error) => {
                self.out.push(CrawledPage { url: url.to_string(), final_url: None, depth, page: Page::default(), error: Some(error) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(p: &str) -> Url {
        Url::parse(&format!("http://h.example{p}")).unwrap()
    }

    #[test]
    fn robots_groups_and_longest_match() {
        let txt = "User-agent: OtherBot\nDisallow: /\n\nUser-agent: *\nDisallow: /private\nAllow: /private/open\nDisallow: /*.pdf$\n";
        let r = Robots::parse(txt, "AtlasCodexBot");
        assert!(r.allowed(&u("/")));
        assert!(r.allowed(&u("/public/page")));
        assert!(!r.allowed(&u("/private")));
        assert!(!r.allowed(&u("/private/secret")));
        assert!(r.allowed(&u("/private/open/x")));
        assert!(!r.allowed(&u("/docs/a.pdf")));
        assert!(r.allowed(&u("/docs/a.pdf?x=1")));
        let other = Robots::parse(txt, "OtherBot");
        assert!(!other.allowed(&u("/public/page")));
    }

    #[test]
    fn robots_own_group_replaces_star() {
        let txt = "User-agent: *\nDisallow: /\n\nUser-agent: atlascodexbot\nUser-agent: friend\nDisallow: /tmp\n";
        let r = Robots::parse(txt, "AtlasCodexBot");
        assert!(r.allowed(&u("/page")));
        assert!(!r.allowed(&u("/tmp/x")));
        // An empty Disallow allows everything.
        let r = Robots::parse("User-agent: *\nDisallow:\n", "AtlasCodexBot");
        assert!(r.allowed(&u("/anything")));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches_wild(b"/a*c", b"/abbbc/d", false));
        assert!(!matches_wild(b"/a*c", b"/abbbd", false));
        assert!(matches_wild(b"/a*c", b"/abc", true));
        assert!(!matches_wild(b"/a*c", b"/abcd", true));
        assert!(matches_wild(b"*", b"", true));
    }
}
