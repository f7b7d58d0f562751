//! Following redirects by hand: the hop limit, every hop's target checked again, credentials kept to one origin.

use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

use super::{filter_headers, FetchError, Fetched, Fetcher};

impl Fetcher {
    /// The request loop: sends, follows redirects by hand (each hop checked again, credentials dropped
    /// when the origin changes), maps 429 and other non-success statuses, then reads the body.
    pub(super) async fn fetch_inner(&self, url: &str, headers: &HeaderMap) -> Result<Fetched, FetchError> {
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
                let next = self.redirect_target(&current, loc)?;
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

    /// The checked target of a redirect from `current` to the `Location` value `loc`; a refusal
    /// is reported as [`FetchError::RedirectBlocked`].
    fn redirect_target(&self, current: &Url, loc: &HeaderValue) -> Result<Url, FetchError> {
        let loc = String::from_utf8_lossy(loc.as_bytes()).into_owned();
        let next = current
            .join(loc.trim())
            .map_err(|e| FetchError::RedirectBlocked { location: redact(&loc), reason: Box::new(FetchError::InvalidUrl(e.to_string())) })?;
        self.check_url(next.clone()).map_err(|e| FetchError::RedirectBlocked { location: redact(next.as_str()), reason: Box::new(e) })
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
