//! DynamoDB implementations: [`DynamoJobStore`] (the job table) and [`DynamoLedger`] (the budget
//! ledger).
//!
//! ## Job table layout (`id` partition key)
//! | attribute | type | meaning |
//! |---|---|---|
//! | `id` | S | job id |
//! | `status` | S | `pending` / `processing` / `completed` / `failed` (GSI partition key) |
//! | `stage` | S | the stage that ran it |
//! | `created_at`, `updated_at` | S | fixed-width RFC 3339 UTC with nanoseconds (`GSI` sort key) |
//! | `lease_owner` | S | worker holding the lease (absent when none) |
//! | `lease_expires_at` | S | same fixed-width timestamp (absent when none) |
//! | `attempts` | N | claims so far |
//! | `expires_at` | N | DynamoDB TTL, epoch seconds |
//! | `doc` | S | the whole [`JobRecord`](crate::job::JobRecord) as JSON |
//! | `event_id` | S | the id of the latest end's event (absent before the first end) |
//! | `announcement` | S | that end's [`crate::events::Announcement`] as JSON |
//!
//! The top-level attributes are authoritative for the fields they hold: a claim changes them with
//! one `UpdateItem` without rewriting `doc`, and reads lay them over `doc`. Timestamps are
//! fixed-width (always 9 fractional digits and `Z`), so DynamoDB's string comparison orders them
//! in time: `lease_expires_at < :now` in a condition is a time comparison with a bound computed
//! by the client (DynamoDB does no arithmetic in conditions).
//!
//! ## Ledger layout (`period` partition key)
//! One item per month (`period = "2025-06"`) with `version`, `spent`, `reserved`, `committed`
//! (micro-USD numbers), `reservations` (map id → {amount, expires_at (epoch ms), job_id}),
//! `by_model` and `by_tenant` (maps name → micro-USD). Every change reads the item, decides
//! client-side (dropping expired reservations), and writes it back conditional on `version`
//! (optimistic concurrency, retried with jittered backoff). A settle also creates the item
//! `{period}#charge#{reservation_id}` with `attribute_not_exists` in the same transaction, which
//! makes settling exactly-once per reservation id. See `docs/design-ledger.md` for scaling.

mod attrs;
mod jobs;
mod ledger;
mod month;

pub use attrs::ts;
pub(super) use attrs::{get_consistent, get_n, n, Item};
pub use jobs::DynamoJobStore;
pub use ledger::DynamoLedger;

/// The job table's GSI for listing by status, newest first.
pub const STATUS_INDEX: &str = "status-created_at-index";
