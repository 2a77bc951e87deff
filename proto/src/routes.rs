//! The public API's route table, declared once.
//!
//! Every route of the HTTP API is one row of [`ROUTES`]: its [`RouteId`], method,
//! path pattern (axum 0.8 syntax, `{param}` for a segment) and the [`Access`] it
//! needs. Four readers use this one table and nothing else:
//! - the server's router registers exactly these rows (an exhaustive `match` on
//!   [`RouteId`] picks the handler, so a row without a handler does not compile);
//! - the server's access check looks the matched route up here and refuses a route
//!   that is not in the table (default deny), so an admin route cannot be left open
//!   to client tokens by forgetting a second list;
//! - the OpenAPI document (`openapi.rs`) is checked against it by a test;
//! - the clients build URLs from it ([`Route::segments`]) instead of `format!`.
//!
//! This crate stays serde-only: percent-encoding of path segments is the caller's
//! (the Rust client pushes the segments into a `url::Url`, which encodes them).

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Anyone: probes and tooling (`/healthz`, `/readyz`, the OpenAPI document).
    Open,
    /// A `client` or `admin` token: decisions and reads.
    Client,
    /// An `admin` token: changes to limits, policies, tiers and membership.
    Admin,
}

/// HTTP method of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    /// Upper-case name, as on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// Names every route; the server matches on it to pick a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    Acquire,
    Release,
    Renew,
    Slots,
    ListLimits,
    PutLimit,
    GetLimit,
    DeleteLimit,
    RateCheck,
    CounterIncr,
    GetCounter,
    ClearCounter,
    Policies,
    PutPolicy,
    DeletePolicy,
    PutPolicyMode,
    PutTier,
    DeleteTier,
    Allowlist,
    Allow,
    Disallow,
    Audit,
    Cluster,
    AddMember,
    RemoveMember,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Stats,
    /// The status page (`/ui`): static HTML, not part of the JSON API.
    Ui,
    /// The status page's script and style sheet.
    UiAsset,
    /// The decision stream (`stream.rs`): an upgrade, not a JSON route.
    Stream,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub id: RouteId,
    pub method: Method,
    /// Path pattern, `{name}` for a parameter segment.
    pub path: &'static str,
    pub access: Access,
    /// False for the status page's static files: they carry no data (the page reads
    /// the JSON API with the viewer's token), so the OpenAPI document, which
    /// describes the JSON API, leaves them out.
    pub json_api: bool,
}

const fn row(id: RouteId, method: Method, path: &'static str, access: Access) -> Route {
    Route {
        id,
        method,
        path,
        access,
        json_api: true,
    }
}

/// The decision stream's upgrade: a client's `POST`, outside the OpenAPI document
/// (it answers 101 and then speaks frames, not JSON; `stream.rs` documents it).
const fn upgrade(id: RouteId, path: &'static str) -> Route {
    Route {
        id,
        method: Method::Post,
        path,
        access: Access::Client,
        json_api: false,
    }
}

/// A static file of the status page (always `GET`, always open).
const fn page(id: RouteId, path: &'static str) -> Route {
    Route {
        id,
        method: Method::Get,
        path,
        access: Access::Open,
        json_api: false,
    }
}

use Access::{Admin, Client, Open};
use Method::{Delete, Get, Post, Put};

/// The whole public API. Order is documentation order.
pub const ROUTES: &[Route] = &[
    row(RouteId::Acquire, Post, "/v1/slots/acquire", Client),
    row(RouteId::Release, Post, "/v1/slots/release", Client),
    row(RouteId::Renew, Post, "/v1/slots/renew", Client),
    row(RouteId::Slots, Get, "/v1/slots/{key}", Client),
    row(RouteId::ListLimits, Get, "/v1/limits", Client),
    row(RouteId::PutLimit, Put, "/v1/limits/{key}", Admin),
    row(RouteId::GetLimit, Get, "/v1/limits/{key}", Client),
    row(RouteId::DeleteLimit, Delete, "/v1/limits/{key}", Admin),
    row(RouteId::RateCheck, Post, "/v1/rate/check", Client),
    row(
        RouteId::CounterIncr,
        Post,
        "/v1/counters/{key}/incr",
        Client,
    ),
    row(RouteId::GetCounter, Get, "/v1/counters/{key}", Client),
    row(RouteId::ClearCounter, Delete, "/v1/counters/{key}", Client),
    row(RouteId::Policies, Get, "/v1/policies", Client),
    row(RouteId::PutPolicy, Put, "/v1/policies/{name}", Admin),
    row(RouteId::DeletePolicy, Delete, "/v1/policies/{name}", Admin),
    row(
        RouteId::PutPolicyMode,
        Put,
        "/v1/policies/{name}/mode",
        Admin,
    ),
    row(RouteId::PutTier, Put, "/v1/tiers/{name}", Admin),
    row(RouteId::DeleteTier, Delete, "/v1/tiers/{name}", Admin),
    row(RouteId::Allowlist, Get, "/v1/allowlist", Client),
    row(RouteId::Allow, Post, "/v1/allowlist", Admin),
    row(RouteId::Disallow, Delete, "/v1/allowlist", Admin),
    row(RouteId::Audit, Get, "/v1/audit", Admin),
    row(RouteId::Cluster, Get, "/v1/cluster", Client),
    row(RouteId::AddMember, Post, "/v1/members", Admin),
    row(RouteId::RemoveMember, Delete, "/v1/members/{id}", Admin),
    row(RouteId::Healthz, Get, "/healthz", Open),
    row(RouteId::Readyz, Get, "/readyz", Open),
    row(RouteId::Metrics, Get, "/metrics", Client),
    row(RouteId::OpenApi, Get, "/v1/openapi.json", Open),
    row(RouteId::Stats, Get, "/v1/stats", Client),
    page(RouteId::Ui, "/ui"),
    page(RouteId::UiAsset, "/ui/{asset}"),
    upgrade(RouteId::Stream, "/v1/stream"),
];

impl RouteId {
    /// This route's row.
    pub fn route(self) -> &'static Route {
        // Every id has exactly one row (a test checks it), so the search succeeds.
        ROUTES.iter().find(|r| r.id == self).unwrap_or(&ROUTES[0])
    }
}

/// The row for `method` on `pattern` (the matched pattern, not the raw path).
pub fn find(method: Method, pattern: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.method == method && r.path == pattern)
}

/// Why [`Route::segments`] could not fill a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamCount {
    pub route: &'static str,
    pub expected: usize,
    pub given: usize,
}

impl std::fmt::Display for ParamCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} takes {} path parameter(s), {} given",
            self.route, self.expected, self.given
        )
    }
}

impl std::error::Error for ParamCount {}

impl Route {
    /// Number of `{param}` segments.
    pub fn param_count(&self) -> usize {
        self.path
            .split('/')
            .filter(|s| s.starts_with('{') && s.ends_with('}'))
            .count()
    }

    /// The path's segments with `params` in place of the `{param}` segments, in
    /// order, *not* percent-encoded (push them into a URL builder that encodes).
    pub fn segments<'a>(&'a self, params: &[&'a str]) -> Result<Vec<&'a str>, ParamCount> {
        let expected = self.param_count();
        if expected != params.len() {
            return Err(ParamCount {
                route: self.path,
                expected,
                given: params.len(),
            });
        }
        let mut params = params.iter();
        Ok(self
            .path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    params.next().copied().unwrap_or_default()
                } else {
                    s
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_id_has_exactly_one_row_and_rows_are_unique() {
        let mut ids = HashSet::new();
        let mut routes = HashSet::new();
        for r in ROUTES {
            assert!(ids.insert(r.id), "{:?} declared twice", r.id);
            assert!(routes.insert((r.method, r.path)), "{r:?} declared twice");
            assert_eq!(r.id.route(), r);
            assert!(r.path.starts_with('/'), "{r:?}");
        }
    }

    #[test]
    fn changes_need_admin() {
        for r in ROUTES {
            // Counters are client data (a limiter's windows, cleared by the app that
            // counts), not configuration: DELETE of a counter is a client's.
            let changes_config = (matches!(r.method, Put | Delete)
                && !r.path.starts_with("/v1/counters/"))
                || r.path.starts_with("/v1/members")
                || r.path.starts_with("/v1/tiers");
            if changes_config {
                assert_eq!(r.access, Admin, "{r:?}");
            }
        }
        assert_eq!(
            find(Get, "/v1/limits/{key}").map(|r| r.access),
            Some(Client)
        );
        assert_eq!(find(Put, "/v1/limits/{key}").map(|r| r.access), Some(Admin));
        assert_eq!(find(Get, "/nope"), None);
        assert_eq!(
            find(Delete, "/v1/counters/{key}").map(|r| r.access),
            Some(Client)
        );
    }

    #[test]
    fn page_routes_are_open_reads_outside_the_json_api() {
        for r in ROUTES
            .iter()
            .filter(|r| !r.json_api && r.id != RouteId::Stream)
        {
            assert_eq!((r.method, r.access), (Get, Open), "{r:?}");
            assert!(r.path.starts_with("/ui"), "{r:?}");
        }
        assert!(!RouteId::UiAsset.route().json_api);
        assert!(RouteId::Stats.route().json_api);
    }

    #[test]
    fn segments_fill_parameters_in_order() {
        let r = RouteId::Slots.route();
        assert_eq!(
            r.segments(&["org:a b"]).unwrap(),
            ["v1", "slots", "org:a b"]
        );
        assert_eq!(
            RouteId::Cluster.route().segments(&[]).unwrap(),
            ["v1", "cluster"]
        );
        let e = r.segments(&[]).unwrap_err();
        assert_eq!((e.expected, e.given), (1, 0));
    }
}
