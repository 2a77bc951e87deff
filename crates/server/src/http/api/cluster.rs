//! `/v1/cluster` and `/v1/members`: this node's view of the cluster, and
//! membership changes (admin); `/v1/stats`: this node's own sampled activity
//! (`crate::stats`; in memory, no round trip). Membership changes may take longer than a normal
//! request (a learner catches up first), so they get several request timeouts.

use axum::extract::State;
use axum::Json as JsonResponse;
use quorate_proto as proto;

use super::ApiState;
use crate::http::error::ApiResult;
use crate::http::extract::{Json, Path};

/// Request timeouts a membership change may take.
const MEMBERSHIP_TIMEOUTS: u32 = 6;

pub(super) async fn cluster(
    State(st): State<ApiState>,
) -> ApiResult<JsonResponse<proto::ClusterResponse>> {
    // Local and bounded (no round trip to the cluster), so no deadline.
    Ok(JsonResponse(st.backend.cluster().await?))
}

pub(super) async fn stats(State(st): State<ApiState>) -> JsonResponse<proto::StatsResponse> {
    JsonResponse(st.stats.response())
}

pub(super) async fn add_member(
    State(st): State<ApiState>,
    Json(req): Json<proto::AddMemberRequest>,
) -> ApiResult<JsonResponse<proto::MembersResponse>> {
    let deadline = st.deadline(MEMBERSHIP_TIMEOUTS);
    Ok(JsonResponse(st.backend.add_member(req, deadline).await?))
}

pub(super) async fn remove_member(
    State(st): State<ApiState>,
    Path(id): Path<u64>,
) -> ApiResult<JsonResponse<proto::MembersResponse>> {
    let deadline = st.deadline(MEMBERSHIP_TIMEOUTS);
    Ok(JsonResponse(st.backend.remove_member(id, deadline).await?))
}
