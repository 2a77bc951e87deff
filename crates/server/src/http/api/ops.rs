//! Operations routes: liveness, readiness, Prometheus metrics, the OpenAPI document,
//! and the JSON answers for unknown routes and methods.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use quorate_proto::codes;
use serde::Serialize;

use super::ApiState;
use crate::http::error::{ApiError, ApiResult};
use crate::telemetry;

#[derive(Serialize)]
pub(super) struct Health {
    status: &'static str,
    node_id: u64,
}

pub(super) async fn healthz(State(st): State<ApiState>) -> JsonResponse<Health> {
    JsonResponse(Health {
        status: "ok",
        node_id: st.config.node_id,
    })
}

pub(super) async fn readyz(State(st): State<ApiState>) -> ApiResult<JsonResponse<Health>> {
    if st.backend.ready().await {
        Ok(JsonResponse(Health {
            status: "ready",
            node_id: st.config.node_id,
        }))
    } else {
        Err(ApiError::unavailable("no leader known or not caught up"))
    }
}

pub(super) async fn metrics(State(st): State<ApiState>) -> Response {
    st.backend.refresh_metrics();
    (
        [(axum::http::header::CONTENT_TYPE, telemetry::CONTENT_TYPE)],
        st.metrics.render(),
    )
        .into_response()
}

/// The OpenAPI 3 description of this API (generated from `quorate-proto`).
pub(super) async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        quorate_proto::openapi::openapi_json(),
    )
        .into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such route")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}
