//! `/v1/allowlist`: keys and addresses exempt from rate limits, managed at run time.
//!
//! `GET` lists the entries and the bound; `POST` adds one and `DELETE` (with the
//! entry in the query string) removes one. Both changes go through the log as
//! `Op::Allow` / `Op::Disallow`, so every replica exempts the same checks from the
//! same index on; the core validates the entry (a bad CIDR is a 400 naming it) and
//! refuses one beyond `max_allowlist` (a 400 naming the bound). Matching is the
//! core's (`quorate_core::state` module `allowlist`); this file only translates, and
//! [`allowlisted`] turns a decision's notes into the wire's field, header and counter.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::Json as JsonResponse;
use quorate_core::{self as core, Op, Outcome, Query as CoreQuery};
use quorate_proto as proto;

use super::ApiState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Authed, Json, Query};

/// Response header listing the keys an allowlist entry exempted (comma-separated).
pub const ALLOWLISTED_HEADER: &str = "x-quorate-allowlisted";

/// The header and counter of a decision with allowlisted checks. `policy_of` gives
/// the policy label of an exempted key (its check's policy, `inline`, or an Envoy
/// limit's name).
pub(crate) fn allowlisted(
    st: &ApiState,
    headers: &mut HeaderMap,
    notes: &[core::Allowlisted],
    policy_of: impl Fn(&str) -> String,
) {
    for n in notes {
        st.metrics.allowlisted(&policy_of(&n.key));
    }
    let keys: Vec<&str> = notes.iter().map(|n| n.key.as_str()).collect();
    if let Ok(v) = HeaderValue::from_str(&keys.join(", ")) {
        headers.insert(ALLOWLISTED_HEADER, v);
    }
    tracing::debug!(keys = ?keys, "allowlisted");
}

/// Wire entry → core entry: exactly one of `key` and `ip`.
pub(crate) fn entry_to_core(e: proto::AllowlistEntry) -> ApiResult<core::AllowEntry> {
    let pattern = match (e.key, e.ip) {
        (Some(k), None) => core::AllowPattern::Key(k),
        (None, Some(ip)) => core::AllowPattern::Ip(ip),
        _ => {
            return Err(ApiError::invalid(
                "an allowlist entry needs exactly one of key and ip",
            ))
        }
    };
    Ok(core::AllowEntry {
        policy: e.policy,
        pattern,
    })
}

pub(crate) fn entry_to_wire(e: core::AllowEntry) -> proto::AllowlistEntry {
    let (key, ip) = match e.pattern {
        core::AllowPattern::Key(k) => (Some(k), None),
        core::AllowPattern::Ip(ip) => (None, Some(ip)),
    };
    proto::AllowlistEntry {
        policy: e.policy,
        key,
        ip,
    }
}

pub(super) async fn allowlist(
    State(st): State<ApiState>,
) -> ApiResult<JsonResponse<proto::AllowlistResponse>> {
    match st.read(CoreQuery::Allowlist).await? {
        Outcome::Allowlist { entries, max } => Ok(JsonResponse(proto::AllowlistResponse {
            entries: entries.into_iter().map(entry_to_wire).collect(),
            max,
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// Replicate an add or a remove and answer with the canonical entry.
async fn change(
    st: &ApiState,
    caller: &core::Caller,
    entry: proto::AllowlistEntry,
    add: bool,
) -> ApiResult<JsonResponse<proto::AllowlistChange>> {
    let entry = entry_to_core(entry)?;
    // The same pure function the core applies: the answer shows what is stored.
    let canonical = core::state::canonical_entry(&entry)?;
    let op = if add {
        Op::Allow(entry)
    } else {
        Op::Disallow(entry)
    };
    match st.write(caller, op).await? {
        Outcome::AllowlistChanged { changed } => {
            tracing::info!(entry = ?canonical, add, changed, "allowlist changed");
            Ok(JsonResponse(proto::AllowlistChange {
                entry: entry_to_wire(canonical),
                changed,
            }))
        }
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn allow(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Json(entry): Json<proto::AllowlistEntry>,
) -> ApiResult<JsonResponse<proto::AllowlistChange>> {
    change(&st, &caller, entry, true).await
}

pub(super) async fn disallow(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Query(entry): Query<proto::AllowlistEntry>,
) -> ApiResult<JsonResponse<proto::AllowlistChange>> {
    change(&st, &caller, entry, false).await
}
