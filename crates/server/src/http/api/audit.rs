//! `GET /v1/audit`: the replicated audit trail of admin changes (admin only).
//!
//! The core records every admin change that changed something — who (token name,
//! `open` or `system`), cluster time, log index, what, before and after — in a
//! bounded ring in the replicated state (`quorate_core::state` module `audit`); this
//! reads it linearizably, filtered by `since` (log index, exclusive) and a key prefix.

use axum::extract::State;
use axum::Json as JsonResponse;
use quorate_core::{Outcome, Query as CoreQuery};
use quorate_proto as proto;
use serde::Deserialize;

use super::ApiState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Query;

const DEFAULT_MAX: u32 = 1000;
const MAX_CAP: u32 = 10_000;

/// Query string of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditParams {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    key: String,
    max: Option<u32>,
}

pub(super) async fn audit(
    State(st): State<ApiState>,
    Query(p): Query<AuditParams>,
) -> ApiResult<JsonResponse<proto::AuditResponse>> {
    // OpenAPI types `since` as int64 (a log index never gets near it): refuse what the
    // schema refuses, rather than accept a u64 no client should send.
    if i64::try_from(p.since).is_err() {
        return Err(ApiError::invalid(format!(
            "since must be in 0..={}",
            i64::MAX
        )));
    }
    let max = p.max.unwrap_or(DEFAULT_MAX);
    if max == 0 || max > MAX_CAP {
        return Err(ApiError::invalid(format!("max must be in 1..={MAX_CAP}")));
    }
    let q = CoreQuery::Audit {
        since: p.since,
        prefix: p.key,
        max,
    };
    match st.read(q).await? {
        Outcome::Audit {
            records,
            truncated,
            capacity,
        } => Ok(JsonResponse(proto::AuditResponse {
            records: records
                .into_iter()
                .map(|r| proto::AuditRecord {
                    index: r.index,
                    time_ms: r.time_ms,
                    caller: r.caller,
                    op: r.op,
                    key: r.key,
                    before: r.before,
                    after: r.after,
                })
                .collect(),
            truncated,
            capacity,
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}
