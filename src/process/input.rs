//! The input stage: a job's page(s) from its source (fetch, crawl, inline, claim check), and the
//! process-wide budget of input memory every job holds a share of while it runs.
//!
//! **Input memory.** Before a job reads its input it takes, from the process's [`InputMemory`]
//! (`worker.input_bytes_in_flight`), the most its input can make it hold ([`worst_case_bytes`]:
//! the input's size — known for inline inputs, `fetch.max_body_bytes` per page otherwise — times
//! the copies the job makes of it, plus its links and metadata, which the input's bytes bound).
//! Once the page is built the share shrinks to what the job holds ([`held_bytes`]) until its
//! result is stored. A job whose share does not fit waits for others to finish. Shares never grow,
//! so jobs cannot wait on each other in a cycle, and the inputs of all jobs in flight never hold
//! more than the setting, whatever `worker.concurrency` is. Parse trees are not counted here:
//! parsing runs on the runtime's threads (one per core), so at most that many are alive at once.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::crawl;
use crate::error::{ErrorKind, JobError};
use crate::job::{Job, JobType, Source};
use crate::page::{self, Page};
use crate::telemetry;

use super::Processor;

/// The budget is counted in KiB so that gigabytes fit a semaphore's permits.
const UNIT_BYTES: usize = 1024;

/// Copies of a page's Markdown a model job holds at its peak: the page's own, the joined input,
/// the input cut to the token limit, and the prompt built from it (the result document then
/// holds another copy while the page's are still alive).
const MODEL_JOB_COPIES: usize = 4;

/// Copies a job without a model holds: the page's Markdown and the result document's.
const PAGE_JOB_COPIES: usize = 2;

/// Bytes counted for a page besides its Markdown, links and JSON-LD: its other metadata (title,
/// description, Open Graph and Twitter tags; a typical upper size on real pages).
const PAGE_OVERHEAD_BYTES: usize = 4 * 1024;

/// The process-wide budget of bytes held by jobs' inputs (`worker.input_bytes_in_flight`).
#[derive(Clone)]
pub(crate) struct InputMemory {
    permits: Arc<Semaphore>,
    /// The whole budget, in units.
    units: u32,
}

/// One job's share of [`InputMemory`]: given back when dropped.
pub(crate) struct InputShare {
    /// `None` only if the budget's semaphore were closed (it never is): the job then runs
    /// unaccounted rather than never.
    permit: Option<OwnedSemaphorePermit>,
    memory: InputMemory,
}

impl InputMemory {
    /// A budget of `total_bytes`.
    pub(crate) fn new(total_bytes: usize) -> InputMemory {
        let units = units_of(total_bytes).max(1);
        InputMemory { permits: Arc::new(Semaphore::new(units as usize)), units }
    }

    /// Waits until `bytes` fit beside the inputs in flight, and takes them (at most the whole
    /// budget, so a job can always run alone). Counts the wait when there was one.
    pub(crate) async fn take(&self, bytes: usize) -> InputShare {
        let want = units_of(bytes).clamp(1, self.units);
        let permit = match self.permits.clone().try_acquire_many_owned(want) {
            Ok(p) => Some(p),
            Err(_) => {
                telemetry::input_memory_wait();
                self.permits.clone().acquire_many_owned(want).await.ok()
            }
        };
        self.publish();
        InputShare { permit, memory: self.clone() }
    }

    /// Shrinks a share to `bytes` (what its job holds now), giving the rest back at once. A
    /// share never grows: what it was taken for is its job's worst case.
    pub(crate) fn shrink(&self, share: &mut InputShare, bytes: usize) {
        let Some(permit) = share.permit.as_mut() else { return };
        let want = units_of(bytes).max(1) as usize;
        let have = permit.num_permits();
        if want < have {
            drop(permit.split(have - want));
            self.publish();
        }
    }

    /// Bytes held by inputs now.
    pub(crate) fn held_bytes(&self) -> usize {
        (self.units as usize).saturating_sub(self.permits.available_permits()) * UNIT_BYTES
    }

    fn publish(&self) {
        telemetry::input_memory_held(self.held_bytes());
    }
}

impl Drop for InputShare {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.memory.publish();
    }
}

fn units_of(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT_BYTES)).unwrap_or(u32::MAX)
}

fn copies(job: &Job) -> usize {
    if job.needs_model() {
        MODEL_JOB_COPIES
    } else {
        PAGE_JOB_COPIES
    }
}

/// The most a job can hold once it has read its input: its Markdown (at most the input's bytes)
/// times [`copies`], plus links and JSON-LD (found in the same bytes, so at most as many again),
/// per page: the inline input's length, or `max_body_bytes` for a page still to be read (each
/// page of a crawl).
pub(crate) fn worst_case_bytes(job: &Job, max_body_bytes: usize) -> usize {
    let page = |bytes: usize| bytes.saturating_mul(copies(job) + 1).saturating_add(PAGE_OVERHEAD_BYTES);
    match &job.source {
        Source::Html(h) => page(h.len()),
        Source::Text(t) => page(t.len()),
        Source::Url(_) if job.job_type == JobType::Crawl => page(max_body_bytes).saturating_mul(job.max_pages.max(1) as usize),
        Source::Url(_) | Source::InputKey(_) => page(max_body_bytes),
    }
}

/// What a job holds once its input is read: its pages' Markdown times the copies it makes of
/// it, their links and metadata.
pub(crate) fn held_bytes(job: &Job, page: Option<&Page>, pages: Option<&[crawl::CrawledPage]>) -> usize {
    let copies = copies(job);
    let one = |p: &Page| {
        let links: usize = p.links.iter().map(String::len).sum();
        let json_ld: usize = p.metadata.json_ld.iter().map(|v| v.to_string().len()).sum();
        p.markdown.len() * copies + links + json_ld + PAGE_OVERHEAD_BYTES
    };
    page.map(one).unwrap_or(0) + pages.map(|ps| ps.iter().map(|cp| one(&cp.page)).sum()).unwrap_or(0)
}

impl Processor {
    /// Fetches or reads the job's input and turns it into page(s).
    pub(super) async fn input(&self, job: &Job) -> Result<(Option<Page>, Option<Vec<crawl::CrawledPage>>), JobError> {
        match &job.source {
            Source::Url(u) if job.job_type == JobType::Crawl => {
                let pages = crawl::crawl(&self.fetcher, u, job.max_pages, job.max_depth, &self.settings.crawl).await?;
                Ok((None, Some(pages)))
            }
            Source::Url(u) => {
                let f = if job.headers.is_empty() {
                    self.fetcher.fetch(u).await?
                } else {
                    self.fetcher.fetch_with_headers(u, &header_map(&job.headers)).await?
                };
                Ok((Some(page_from_body(&f.body, &f.content_type, Some(&f.final_url))), None))
            }
            Source::Html(h) => Ok((Some(page::process(h, None)), None)),
            Source::Text(t) => Ok((Some(page::text_page(t)), None)),
            Source::InputKey(k) => {
                let bytes = self
                    .backends
                    .artifacts
                    .get(k)
                    .await?
                    .ok_or_else(|| JobError::permanent(ErrorKind::InputMissing, format!("no object `{k}` in the artifacts store")))?;
                // The same bound as a fetched page: what one job may hold and parse.
                let limit = self.settings.fetch.max_body_bytes;
                if bytes.len() > limit {
                    return Err(JobError::permanent(
                        ErrorKind::InputTooLarge,
                        format!("object `{k}` is {} bytes; one job's input may be at most {limit} (fetch.max_body_bytes)", bytes.len()),
                    ));
                }
                let text = String::from_utf8(bytes)
                    .map_err(|_| JobError::permanent(ErrorKind::InputNotUtf8, format!("object `{k}` is not UTF-8 text")))?;
                let looks_html = text.trim_start().starts_with('<');
                Ok((Some(if looks_html { page::process(&text, None) } else { page::text_page(&text) }), None))
            }
        }
    }
}

fn page_from_body(body: &str, content_type: &str, url: Option<&url::Url>) -> Page {
    if content_type.starts_with("text/html") || content_type.starts_with("application/xhtml") {
        page::process(body, url)
    } else {
        page::text_page(body)
    }
}

/// The job's caller headers as a header map (the fetcher filters them further).
fn header_map(h: &std::collections::BTreeMap<String, String>) -> reqwest::header::HeaderMap {
    h.iter()
        .filter_map(|(k, v)| {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).ok()?;
            let value = reqwest::header::HeaderValue::from_str(v).ok()?;
            Some((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_job_waits_for_input_memory_until_another_gives_its_share_back() {
        let memory = InputMemory::new(10 * 1024);
        let first = memory.take(6 * 1024).await;
        assert_eq!(memory.held_bytes(), 6 * 1024);
        let m = memory.clone();
        let second = tokio::spawn(async move { m.take(6 * 1024).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "two shares of 6 KiB do not fit 10 KiB");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
        assert_eq!(memory.held_bytes(), 6 * 1024);
        drop(second);
        assert_eq!(memory.held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_share_shrinks_to_what_its_job_holds_and_the_rest_is_free_at_once() {
        let memory = InputMemory::new(10 * 1024);
        let mut a = memory.take(8 * 1024).await;
        memory.shrink(&mut a, 1500);
        assert_eq!(memory.held_bytes(), 2 * 1024, "1,500 bytes round up to 2 KiB");
        let b = tokio::time::timeout(Duration::from_secs(1), memory.take(8 * 1024)).await.expect("8 KiB fit beside 2");
        assert_eq!(memory.held_bytes(), 10 * 1024);
        memory.shrink(&mut a, 9 * 1024);
        assert_eq!(memory.held_bytes(), 10 * 1024, "a share never grows");
        drop((a, b));
        assert_eq!(memory.held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_share_larger_than_the_budget_is_clamped_to_it_so_the_job_still_runs_alone() {
        let memory = InputMemory::new(4 * 1024);
        let a = tokio::time::timeout(Duration::from_secs(1), memory.take(64 * 1024)).await.expect("clamped to the budget");
        assert_eq!(memory.held_bytes(), 4 * 1024);
        drop(a);
        assert_eq!(memory.held_bytes(), 0);
    }

    #[test]
    fn the_worst_case_is_the_inline_input_times_its_copies_or_max_body_bytes_per_page_to_read() {
        let text =
            crate::job::parse_message(r#"{"job_id":"a","text":"0123456789","instructions":"x","schema":{"type":"object"}}"#).unwrap();
        assert_eq!(worst_case_bytes(&text, 1 << 20), 10 * (MODEL_JOB_COPIES + 1) + PAGE_OVERHEAD_BYTES);
        let url = crate::job::parse_message(r#"{"job_id":"b","url":"https://example.com/"}"#).unwrap();
        assert_eq!(worst_case_bytes(&url, 1 << 20), (1 << 20) * (PAGE_JOB_COPIES + 1) + PAGE_OVERHEAD_BYTES);
    }
}
