//! `/v1/slots`: acquire, release and renew leases; show a key's usage.
//!
//! An acquire takes one slot on every named key or none (the core decides); the
//! lease id is the idempotency key, so a caller retrying after a lost response gets
//! its original grant back. A denial is a 429 whose body names every blocking key and
//! whose `Retry-After` is the time until enough leases on them expire.
//!
//! A lease belongs to the token that acquired it: the caller travels inside every op,
//! and the core refuses another token's release, renew or re-acquire (403) unless it
//! is admin. Listings show other tokens' leases without their ids (an id is what
//! releases a lease).
//!
//! An acquire with `wait_ms` may wait for its slot in the key's FIFO queue instead of
//! being denied; `wait.rs` serves that wait. A key's listing shows its queue, with
//! other tokens' waiter ids hidden as for leases.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use quorate_core::{self as core, Op, Outcome, Query};
use quorate_proto::{self as proto, codes};

use super::ApiState;
use crate::http::error::{set_retry_after, ApiError, ApiResult};
use crate::http::extract::{Authed, Json, Path};

fn slots_to_wire(slots: Vec<core::SlotUsage>) -> Vec<proto::SlotUsage> {
    slots
        .into_iter()
        .map(|s| proto::SlotUsage {
            key: s.key,
            used: s.used,
            limit: s.limit,
        })
        .collect()
}

pub(super) async fn acquire(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Json(req): Json<proto::AcquireRequest>,
) -> ApiResult<Response> {
    let wait_ms = req.wait_ms.unwrap_or(0);
    if wait_ms > st.config.max_wait_ms {
        return Err(ApiError::invalid(format!(
            "wait_ms {wait_ms} is above this cluster's maximum wait of {} ms (limits.max_wait_ms)",
            st.config.max_wait_ms
        )));
    }
    let acquire = core::Acquire {
        keys: req.keys,
        lease_id: req
            .lease_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        holder: req.holder.unwrap_or_default(),
        ttl_ms: req.ttl_ms.unwrap_or(st.config.default_ttl_ms),
    };
    if wait_ms > 0 {
        return super::wait::acquire(st, caller, acquire, wait_ms).await;
    }
    match st.write(&caller, Op::Acquire(acquire)).await? {
        Outcome::Granted(g) => Ok(granted(&st, g, Vec::new(), 0)),
        Outcome::GrantedShadow {
            grant,
            shadow_denied,
        } => Ok(granted(&st, grant, shadow_denied, 0)),
        Outcome::Denied(d) => Ok(denied(&st, d, None)),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// The 200 of a granted acquire; `waited_ms` is the time a waiting acquire spent
/// queued (0: granted at once).
pub(super) fn granted(
    st: &ApiState,
    g: core::Grant,
    notes: Vec<core::ShadowDenial>,
    waited_ms: u64,
) -> Response {
    let result = match (g.reused, waited_ms) {
        (true, _) => "reused",
        (false, 0) => "granted",
        (false, _) => "granted_after_wait",
    };
    st.metrics.decision("acquire", result);
    tracing::debug!(lease_id = %g.lease_id, token = g.fencing_token, waited_ms, "granted");
    let mut headers = axum::http::HeaderMap::new();
    let shadow_denied = if notes.is_empty() {
        Vec::new()
    } else {
        super::policies::shadow_denied(st, &mut headers, notes)
    };
    let body = proto::AcquireGranted {
        granted: true,
        lease_id: g.lease_id,
        fencing_token: g.fencing_token,
        expires_at_ms: g.expires_at_ms,
        slots: slots_to_wire(g.slots),
        shadow_denied,
        waited_ms,
    };
    (headers, JsonResponse(body)).into_response()
}

/// The 429 of a denied acquire, `Retry-After` set. `queue_position`: the place a
/// waiting acquire had when its wait ended.
pub(super) fn denied(st: &ApiState, d: core::Denial, queue_position: Option<u32>) -> Response {
    st.metrics.decision(
        "acquire",
        if queue_position.is_some() {
            "wait_timeout"
        } else {
            "denied"
        },
    );
    let message = format!("no free slot on {}", d.blocked_by.join(", "));
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        JsonResponse(proto::AcquireDenied {
            granted: false,
            error: codes::LIMIT_EXCEEDED.into(),
            message,
            blocked_by: d.blocked_by,
            slots: slots_to_wire(d.slots),
            retry_after_ms: d.retry_after_ms,
            queue_position,
        }),
    )
        .into_response();
    set_retry_after(resp.headers_mut(), d.retry_after_ms);
    resp
}

pub(super) async fn release(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Json(req): Json<proto::ReleaseRequest>,
) -> ApiResult<JsonResponse<proto::ReleaseResponse>> {
    core::validate::lease_id(&req.lease_id)?;
    let op = Op::Release {
        lease_id: req.lease_id,
    };
    match st.write(&caller, op).await? {
        Outcome::Released { released } => {
            st.metrics
                .decision("release", if released { "released" } else { "absent" });
            Ok(JsonResponse(proto::ReleaseResponse { released }))
        }
        other => Err(ApiError::unexpected(&other)),
    }
}

pub(super) async fn renew(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Json(req): Json<proto::RenewRequest>,
) -> ApiResult<JsonResponse<proto::RenewResponse>> {
    let op = Op::Renew {
        lease_id: req.lease_id,
        ttl_ms: req.ttl_ms.unwrap_or(st.config.default_ttl_ms),
    };
    match st.write(&caller, op).await {
        Ok(Outcome::Renewed {
            lease_id,
            expires_at_ms,
        }) => {
            st.metrics.decision("renew", "renewed");
            Ok(JsonResponse(proto::RenewResponse {
                lease_id,
                expires_at_ms,
            }))
        }
        Ok(other) => Err(ApiError::unexpected(&other)),
        Err(e) => {
            if e.code == codes::LEASE_NOT_FOUND {
                st.metrics.decision("renew", "not_found");
            }
            Err(e)
        }
    }
}

pub(super) async fn slots(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    Path(key): Path<String>,
) -> ApiResult<JsonResponse<proto::SlotsResponse>> {
    // Two linearizable reads, side by side: each reflects every write acknowledged
    // before the request (the queue may have moved between them, as it may have
    // by the time the answer arrives).
    let (usage, queue) = tokio::try_join!(
        st.read(Query::Usage { key: key.clone() }),
        st.read(Query::Queue { key })
    )?;
    let queue = match queue {
        Outcome::Queue(q) => proto::QueueInfo {
            length: u32::try_from(q.waiters.len()).unwrap_or(u32::MAX),
            waiters: q
                .waiters
                .into_iter()
                .map(|w| proto::WaiterInfo {
                    // Would let the caller take the waiter's place (LeaveQueue)
                    // or its grant.
                    lease_id: visible_lease_id(&caller, &w.owner, w.lease_id),
                    holder: w.holder,
                    position: w.position,
                    deadline_ms: w.deadline_ms,
                    keys: w.keys,
                })
                .collect(),
        },
        other => return Err(ApiError::unexpected(&other)),
    };
    match usage {
        Outcome::Usage(u) => Ok(JsonResponse(proto::SlotsResponse {
            key: u.key,
            used: u.used,
            limit: u.limit,
            leases: u
                .leases
                .into_iter()
                .map(|l| proto::LeaseInfo {
                    // Listed (it occupies a slot) but not handed over.
                    lease_id: visible_lease_id(&caller, &l.owner, l.lease_id),
                    holder: l.holder,
                    fencing_token: l.fencing_token,
                    expires_at_ms: l.expires_at_ms,
                })
                .collect(),
            queue,
        })),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// `lease_id` as a listing shows it to `caller`: empty (left out of the JSON) when
/// the lease or waiter belongs to another token, whose id would let the caller
/// release, renew or take it.
fn visible_lease_id(caller: &core::Caller, owner: &str, lease_id: String) -> String {
    if caller.may_use(owner) {
        lease_id
    } else {
        String::new()
    }
}
