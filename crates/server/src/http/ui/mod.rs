//! The status page at `/ui`: static files compiled into the binary, served by every
//! node.
//!
//! Contract: the files carry no data, so their routes are `Open` in the route table
//! and outside the OpenAPI document (`json_api: false`). The page's script reads the
//! JSON API of the node that served it (`/v1/cluster`, `/v1/stats`, `/v1/limits`,
//! `/v1/policies`) with the viewer's own token, asking for one when the API answers
//! 401, so what a viewer sees is exactly what that token may read (a client token is
//! enough; the page shows no lease ids). It only ever sends `GET` requests.
//!
//! Every answer carries a Content-Security-Policy that allows scripts, styles,
//! images and requests from this node only, no framing and no inline code, so even
//! a key name crafted as markup could not run (the script also only writes text).
//! Files are revalidated on every load (`no-cache` with an `ETag`): a node upgraded
//! in place never serves a stale script against its new API, and an unchanged
//! file costs a 304.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use quorate_proto::codes;

use super::error::ApiError;
use super::extract::Path;

/// Self only; nothing inline, nothing framed, no plugins, no forms posted anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("assets/index.html"),
};

/// The files under `/ui/{asset}`.
const ASSETS: [Asset; 3] = [
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// Total bytes of the page's files (reported in the docs; checked by a test).
pub fn total_bytes() -> usize {
    INDEX.body.len() + ASSETS.iter().map(|a| a.body.len()).sum::<usize>()
}

/// `GET /ui`.
pub(crate) async fn page(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /ui/{asset}`; 404 (the API's JSON error) for any other name.
pub(crate) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a, &headers),
        None => {
            ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such file").into_response()
        }
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = etag(asset);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// A strong validator for a file: FNV-1a of its bytes, computed once per file.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(ASSETS.iter())
            .map(|a| (a.name, format!("\"{:016x}\"", fnv1a(a.body))))
            .collect()
    });
    tags.iter()
        .find(|(n, _)| *n == asset.name)
        .map_or("\"0\"", |(_, t)| t.as_str())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_only_files_it_serves() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for a in &ASSETS {
            assert!(
                html.contains(&format!("/ui/{}", a.name)),
                "{} unused",
                a.name
            );
        }
        // No inline code or style: the CSP would refuse it.
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("style="), "inline style");
        assert!(!html.contains("<style"), "inline style sheet");
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn the_script_never_changes_state_or_writes_markup() {
        let js = std::str::from_utf8(ASSETS[0].body).unwrap();
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "eval(",
            "method:",
        ] {
            assert!(!js.contains(forbidden), "app.js uses {forbidden}");
        }
        assert!(
            js.contains("fetch(path, { headers, cache"),
            "one fetch, GET only"
        );
    }

    #[test]
    fn etags_differ_per_file_and_stay_small() {
        assert_ne!(etag(&INDEX), etag(&ASSETS[0]));
        assert!(etag(&INDEX).starts_with('"'));
        assert!(
            total_bytes() < 48 * 1024,
            "the page grew to {} bytes",
            total_bytes()
        );
    }
}
