//! The public API as an OpenAPI 3 document, generated from the wire types.
//!
//! Schemas come from the `ToSchema` derives on the types of this crate, so the
//! document cannot drift from what the server and client (de)serialize. The paths
//! below are descriptions only (the handlers live in the server); a test compares the
//! generated document with the checked-in `proto/openapi.json`, so a change to the
//! contract shows up in review as a diff of that file. Regenerate it with
//! `UPDATE_OPENAPI=1 cargo test -p quorate-proto`.
//!
//! Every node serves the document at `GET /v1/openapi.json`; `scripts/fuzz_api.sh`
//! feeds it to schemathesis against a live cluster.

#![allow(dead_code)] // the path functions exist only to carry their attributes

use utoipa::OpenApi;

use crate::*;

/// `{"status", "node_id"}` of `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub node_id: u64,
}

#[utoipa::path(post, path = "/v1/slots/acquire", tag = "slots",
    request_body = AcquireRequest,
    responses(
        (status = 200, description = "Granted: one slot taken on every key (with wait_ms: at once, or when its turn came in the FIFO queue; waited_ms says how long it waited)", body = AcquireGranted),
        (status = 400, description = "Invalid request (including wait_ms above the cluster's limits.max_wait_ms; the message names the maximum)", body = ErrorBody),
        (status = 403, description = "forbidden: lease_id is live and belongs to another token (admins excepted)", body = ErrorBody),
        (status = 409, description = "lease_id is live on other keys", body = ErrorBody),
        (status = 429, description = "A key is at its limit (Retry-After set); with wait_ms, the wait ended ungranted and queue_position is the place it had", body = AcquireDenied),
        (status = 503, description = "Nothing was granted (Retry-After set): unavailable (no quorum), or state_full (the cluster holds max_leases leases, or the new keys would exceed max_slot_keys; the message names the cap)", body = ErrorBody),
    ))]
fn acquire() {}

#[utoipa::path(post, path = "/v1/slots/release", tag = "slots",
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "released is false for unknown, expired or released leases", body = ReleaseResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 403, description = "forbidden: the lease belongs to another token (admins excepted)", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn release() {}

#[utoipa::path(post, path = "/v1/slots/renew", tag = "slots",
    request_body = RenewRequest,
    responses(
        (status = 200, description = "New expiry", body = RenewResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 403, description = "forbidden: the lease belongs to another token (admins excepted)", body = ErrorBody),
        (status = 404, description = "lease_not_found", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn renew() {}

#[utoipa::path(get, path = "/v1/slots/{key}", tag = "slots",
    params(("key" = String, Path, description = "Slot key")),
    responses(
        (status = 200, description = "Usage and live leases (linearizable); and the queue of waiting acquires; leases and waiters of other tokens are listed without lease_id unless the caller is admin", body = SlotsResponse),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn slots() {}

#[utoipa::path(put, path = "/v1/limits/{key}", tag = "limits",
    params(("key" = String, Path, description = "Slot key")),
    request_body = PutLimitRequest,
    responses(
        (status = 200, description = "Override set", body = PutLimitResponse),
        (status = 400, description = "Invalid key or limit", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn put_limit() {}

#[utoipa::path(get, path = "/v1/limits/{key}", tag = "limits",
    params(("key" = String, Path, description = "Slot key")),
    responses(
        (status = 200, description = "Effective limit and its source", body = LimitEntry),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn get_limit() {}

#[utoipa::path(delete, path = "/v1/limits/{key}", tag = "limits",
    params(("key" = String, Path, description = "Slot key")),
    responses(
        (status = 200, description = "deleted is false when there was no override", body = DeleteResponse),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn delete_limit() {}

#[utoipa::path(get, path = "/v1/limits", tag = "limits",
    params(
        ("prefix" = Option<String>, Query, description = "Key prefix, e.g. org:"),
        ("max" = Option<u32>, Query, description = "Most rows (1..=10000, default 1000)"),
    ),
    responses(
        (status = 200, description = "Overrides and keys in use under the prefix", body = ListLimitsResponse),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn list_limits() {}

#[utoipa::path(post, path = "/v1/rate/check", tag = "rate",
    request_body = RateCheckRequest,
    responses(
        (status = 200, description = "Allowed (and charged); RateLimit-Policy and RateLimit headers set", body = RateCheckResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "policy_not_found", body = ErrorBody),
        (status = 429, description = "Rate limited; nothing charged (Retry-After set)", body = RateCheckResponse),
        (status = 503, description = "Nothing charged (Retry-After set): unavailable (no quorum), or state_full (a new key would exceed max_rate_keys buckets; known keys are still checked)", body = ErrorBody),
    ))]
fn rate_check() {}

#[utoipa::path(post, path = "/v1/counters/{key}/incr", tag = "counters",
    params(("key" = String, Path, description = "Counter key (rate-key rules: 1..=256 bytes of A-Z a-z 0-9 _ - . : / @ + =), percent-encoded as one path segment (a / in the key is %2F)")),
    request_body = CounterIncrRequest,
    responses(
        (status = 200, description = "The counter after the increment (one Raft write); a new or expired counter starts at amount with expiry now + expiry_ms, in cluster time", body = CounterResponse),
        (status = 400, description = "Invalid key, amount or expiry_ms", body = ErrorBody),
        (status = 503, description = "Nothing counted (Retry-After set): unavailable (no quorum; a retry may count twice if the first attempt was applied), or state_full (a new key would exceed max_rate_keys, which buckets and counters share)", body = ErrorBody),
    ))]
fn counter_incr() {}

#[utoipa::path(get, path = "/v1/counters/{key}", tag = "counters",
    params(("key" = String, Path, description = "Counter key, percent-encoded as one path segment")),
    responses(
        (status = 200, description = "The counter now (linearizable); value 0 and expires_at_ms null when it has expired or never existed", body = CounterResponse),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn get_counter() {}

#[utoipa::path(delete, path = "/v1/counters/{key}", tag = "counters",
    params(("key" = String, Path, description = "Counter key, percent-encoded as one path segment")),
    responses(
        (status = 200, description = "deleted is false when there was no live counter", body = DeleteResponse),
        (status = 400, description = "Invalid key", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn clear_counter() {}

#[utoipa::path(get, path = "/v1/policies", tag = "policies",
    responses(
        (status = 200, description = "Policies and tiers", body = PoliciesResponse),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn policies() {}

#[utoipa::path(put, path = "/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name")),
    request_body = PolicySpec,
    responses(
        (status = 200, description = "Policy set", body = PolicyEntry),
        (status = 400, description = "Invalid policy", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn put_policy() {}

#[utoipa::path(put, path = "/v1/policies/{name}/mode", tag = "policies",
    params(("name" = String, Path, description = "Policy name")),
    request_body = PolicyModeRequest,
    responses(
        (status = 200, description = "Mode set: a shadow policy is decided and charged, but a request only it would deny is allowed and says so (shadow_denied, x-quorate-shadow-denied)", body = PolicyModeResponse),
        (status = 400, description = "Invalid name or mode", body = ErrorBody),
        (status = 404, description = "policy_not_found", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn put_policy_mode() {}

#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name")),
    responses(
        (status = 200, description = "deleted is false when there was none", body = DeleteResponse),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn delete_policy() {}

#[utoipa::path(put, path = "/v1/tiers/{name}", tag = "policies",
    params(("name" = String, Path, description = "Tier name")),
    request_body = PutTierRequest,
    responses(
        (status = 200, description = "Tier set", body = TierEntry),
        (status = 400, description = "Invalid tier", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn put_tier() {}

#[utoipa::path(delete, path = "/v1/tiers/{name}", tag = "policies",
    params(("name" = String, Path, description = "Tier name")),
    responses(
        (status = 200, description = "deleted is false when there was none", body = DeleteResponse),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn delete_tier() {}

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "This node's view of the cluster", body = ClusterResponse)))]
fn cluster() {}

#[utoipa::path(get, path = "/v1/stats", tag = "cluster",
    responses((status = 200, description = "This node's own counters, sampled in memory (the status page's charts)", body = StatsResponse)))]
fn stats() {}

#[utoipa::path(post, path = "/v1/members", tag = "cluster",
    request_body = AddMemberRequest,
    responses(
        (status = 200, description = "Members after the change", body = MembersResponse),
        (status = 400, description = "Refused", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn add_member() {}

#[utoipa::path(delete, path = "/v1/members/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "Node id")),
    responses(
        (status = 200, description = "Members after the change", body = MembersResponse),
        (status = 400, description = "Refused", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn remove_member() {}

#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process is serving", body = Health)))]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Knows a leader and has caught up", body = Health),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Metrics in the OpenMetrics text format", body = String, content_type = "application/openmetrics-text")))]
fn metrics() {}

#[utoipa::path(get, path = "/v1/allowlist", tag = "allowlist",
    responses(
        (status = 200, description = "Allowlist entries and the bound (linearizable)", body = AllowlistResponse),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn allowlist() {}

#[utoipa::path(post, path = "/v1/allowlist", tag = "allowlist",
    request_body = AllowlistEntry,
    responses(
        (status = 200, description = "Entry added (changed is false when it was there): rate checks and Envoy descriptors it matches are allowed without being charged", body = AllowlistChange),
        (status = 400, description = "Invalid entry (a bad CIDR is named), or the list is full (max_allowlist)", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn allow() {}

#[utoipa::path(delete, path = "/v1/allowlist", tag = "allowlist",
    params(
        ("policy" = Option<String>, Query, description = "The entry's policy (absent: a global entry)"),
        ("key" = Option<String>, Query, description = "A key glob entry"),
        ("ip" = Option<String>, Query, description = "An address or CIDR entry (any form of the same network)"),
    ),
    responses(
        (status = 200, description = "Entry removed (changed is false when there was none)", body = AllowlistChange),
        (status = 400, description = "Invalid entry", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn disallow() {}

#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(
        ("since" = Option<u64>, Query, description = "Only records with a log index above this (default 0: all)"),
        ("key" = Option<String>, Query, description = "Only records whose key starts with this, e.g. limit:org:"),
        ("max" = Option<u32>, Query, description = "Most records (1..=10000, default 1000)"),
    ),
    responses(
        (status = 200, description = "Admin changes, oldest first: caller, cluster time, log index, before and after (linearizable)", body = AuditResponse),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 403, description = "Needs an admin token", body = ErrorBody),
        (status = 503, description = "No quorum", body = ErrorBody),
    ))]
fn audit() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "quorate",
        description = "A replicated limiter: concurrency slots with leases and rate limits, linearizable through Raft. Every non-2xx body is an ErrorBody. Every response carries `x-quorate-leader: <the leader's API base URL>` while a leader is known: any node decides any request (followers forward), and a client that sends to the named leader saves a hop (follow it when it changes; fall back to any node).",
        version = "1"
    ),
    paths(
        acquire,
        release,
        renew,
        slots,
        put_limit,
        get_limit,
        delete_limit,
        list_limits,
        rate_check,
        counter_incr,
        get_counter,
        clear_counter,
        policies,
        put_policy,
        put_policy_mode,
        delete_policy,
        put_tier,
        delete_tier,
        allowlist,
        allow,
        disallow,
        audit,
        cluster,
        stats,
        add_member,
        remove_member,
        healthz,
        readyz,
        metrics
    ),
    components(schemas(
        ErrorBody,
        AcquireRequest,
        AcquireGranted,
        AcquireDenied,
        SlotUsage,
        ReleaseRequest,
        ReleaseResponse,
        RenewRequest,
        RenewResponse,
        LeaseInfo,
        SlotsResponse,
        QueueInfo,
        WaiterInfo,
        PutLimitRequest,
        PutLimitResponse,
        LimitSource,
        LimitEntry,
        DeleteResponse,
        ListLimitsResponse,
        RateCheck,
        RateCheckRequest,
        RateResult,
        RateCheckResponse,
        CounterIncrRequest,
        CounterResponse,
        PolicySpec,
        PolicyEntry,
        PolicyMode,
        PolicyModeRequest,
        PolicyModeResponse,
        ShadowDenial,
        ShadowCount,
        AllowlistEntry,
        AllowlistResponse,
        AllowlistChange,
        AuditRecord,
        AuditResponse,
        TierEntry,
        PutTierRequest,
        PoliciesResponse,
        Member,
        ClusterResponse,
        ClockOffset,
        NodeStatus,
        StatsResponse,
        StatsSample,
        RateKeyStats,
        AddMemberRequest,
        MembersResponse,
        Health
    ))
)]
struct ApiDoc;

/// The OpenAPI document, pretty-printed JSON with a trailing newline.
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in document must be exactly what the types generate.
    #[test]
    fn checked_in_openapi_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = openapi_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &generated).expect("write openapi.json");
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "proto/openapi.json is out of date: run UPDATE_OPENAPI=1 cargo test -p quorate-proto"
        );
        let v: serde_json::Value = serde_json::from_str(&generated).expect("valid JSON");
        assert_eq!(v["openapi"].as_str().map(|s| &s[..2]), Some("3."));
        assert!(v["paths"]["/v1/slots/acquire"]["post"].is_object());
        assert!(v["components"]["schemas"]["AcquireRequest"]["properties"]["keys"].is_object());
    }

    /// The document describes exactly the JSON routes of the route table (the
    /// document does not describe itself, nor the status page's static files).
    #[test]
    fn document_paths_are_the_route_table() {
        use crate::routes::{RouteId, ROUTES};
        let v: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for (path, ops) in v["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let table: std::collections::BTreeSet<_> = ROUTES
            .iter()
            .filter(|r| r.id != RouteId::OpenApi && r.json_api)
            .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
            .collect();
        assert_eq!(documented, table);
    }
}
