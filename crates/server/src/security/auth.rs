//! Access control: bearer tokens with roles on the public API, a cluster id and a
//! shared secret (as HMAC signatures) between peers.
//!
//! A limiter sits in front of every expensive operation, so whoever can call its admin
//! API can raise their own limits, and whoever can reach the Raft port can forge log
//! entries or votes. The rules:
//!
//! - **Public API.** Tokens are configured in `[auth]` of `cluster.toml`, each with a
//!   role. `client` may acquire, release, renew, check rates and read usage, limits,
//!   policies, cluster state and metrics; `admin` may also change limits, policies,
//!   tiers and membership. Missing or wrong token → 401 `unauthorized`; a valid token
//!   whose role is too weak → 403 `forbidden`. `/healthz`, `/readyz` and
//!   `/v1/openapi.json` are open (probes and tooling must work without secrets).
//! - **No tokens configured** ("open mode") → every route, admin included, is served
//!   to loopback callers that did not come through a proxy, and to nobody else (the
//!   node says so at startup): a fresh `quorate up` on a laptop works, an accidental
//!   public bind does not hand out admin rights. A request carrying `Forwarded`,
//!   `X-Forwarded-For` or `X-Real-IP` is refused even from loopback: a local reverse
//!   proxy makes remote users look local.
//! - **Peers.** Every Raft RPC and forwarded request carries the cluster id; a node
//!   refuses RPCs whose cluster id differs from its own (two clusters on one network
//!   must not merge). With a cluster secret, every request is also signed with it
//!   (HMAC-SHA256 with a timestamp and a nonce, [`super::signing`]): the secret itself
//!   never crosses the wire, and a captured request cannot be altered or replayed.
//!   Refusals are counted and logged with the peer's address. Which links need more
//!   than the cluster id (any that leaves the host) is decided at startup by
//!   [`super::links`].
//!
//! Secrets come inline (`token = "..."`), from a file (`token_file`) or from an
//! environment variable (`token_env`); they never appear in `Debug` output or logs,
//! and are compared in constant time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use quorate_core::Caller;
use serde::{Deserialize, Serialize};

use super::signing::{self, NonceError, PeerRefusal, ReplayGuard, Signature, Signed};
use crate::peer::protocol::{AUTH_HEADER, CLUSTER_HEADER};

/// What a token may do. `Admin` includes everything `Client` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Admin,
}

/// `[auth]` of `cluster.toml`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Bearer tokens for the public API.
    #[serde(default)]
    pub tokens: Vec<TokenSpec>,
    /// The secret shared by every node for Raft RPC and forwarding (one of these).
    pub cluster_secret: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub cluster_secret_env: Option<String>,
}

impl std::fmt::Debug for AuthSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSection")
            .field("tokens", &self.tokens)
            .field(
                "cluster_secret",
                &self.cluster_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("cluster_secret_file", &self.cluster_secret_file)
            .field("cluster_secret_env", &self.cluster_secret_env)
            .finish()
    }
}

/// One `[[auth.tokens]]` entry: a name (for logs), a role and exactly one secret source.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub name: String,
    pub role: Role,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("token_env", &self.token_env)
            .finish()
    }
}

/// A secret held in memory; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    pub fn new(s: impl Into<Vec<u8>>) -> Self {
        Self(s.into())
    }

    /// Constant-time comparison: the time taken depends on the lengths only, never on
    /// where the first differing byte is.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let a = &self.0;
        let mut diff = u8::from(a.len() != candidate.len());
        for i in 0..a.len().max(candidate.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = candidate.get(i).copied().unwrap_or(0);
            diff |= x ^ y;
        }
        std::hint::black_box(diff) == 0
    }

    /// The secret's bytes, as an HMAC key (never put them on the wire).
    fn key(&self) -> &[u8] {
        &self.0
    }
}

/// Read one secret from exactly one of its sources.
fn read_secret(
    what: &str,
    inline: &Option<String>,
    file: &Option<PathBuf>,
    env: &Option<String>,
    base: &Path,
) -> Result<Option<Secret>, String> {
    let sources =
        usize::from(inline.is_some()) + usize::from(file.is_some()) + usize::from(env.is_some());
    if sources > 1 {
        return Err(format!(
            "{what}: give only one of the inline value, _file or _env"
        ));
    }
    let value = if let Some(v) = inline {
        v.clone()
    } else if let Some(f) = file {
        let path = if f.is_relative() {
            base.join(f)
        } else {
            f.clone()
        };
        std::fs::read_to_string(&path)
            .map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string()
    } else if let Some(var) = env {
        std::env::var(var).map_err(|_| format!("{what}: environment variable {var} is not set"))?
    } else {
        return Ok(None);
    };
    if value.len() < 16 {
        return Err(format!("{what}: secrets must be at least 16 characters"));
    }
    if value.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "{what}: secrets must be printable ASCII without spaces"
        ));
    }
    Ok(Some(Secret::new(value)))
}

/// Resolved API access rules.
#[derive(Debug, Clone, Default)]
pub struct ApiAuth {
    tokens: Vec<(String, Role, Secret)>,
}

/// Headers a reverse proxy adds: a request carrying one came through a proxy, so its
/// loopback source address says nothing about where the caller is.
pub const PROXY_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 401: no token, malformed header, unknown token, or (open mode) not loopback or
    /// proxied.
    Unauthorized(&'static str),
    /// 403: valid token, role too weak.
    Forbidden,
}

impl ApiAuth {
    /// Rules with the given tokens (empty: open mode, loopback callers only).
    pub fn with_tokens(tokens: Vec<(String, Role, Secret)>) -> Self {
        Self { tokens }
    }

    /// True when no tokens are configured (open mode: every route, admin included,
    /// for loopback callers that did not come through a proxy).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Who is calling: worked out once per request, from the bearer token (or, in
    /// open mode, from the connection). The token's name and role become the core's
    /// [`Caller`]; in open mode every allowed caller is the same anonymous admin,
    /// [`Caller::system`]. What the caller may do is a separate step,
    /// [`permits`], over the role the route table declares (DRF's split of
    /// authentication and permissions).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Caller, Denied> {
        if self.is_open() {
            // Unknown peer address (no connect info): refuse, never assume loopback.
            if !peer.is_some_and(|a| a.ip().to_canonical().is_loopback()) {
                return Err(Denied::Unauthorized(
                    "no API tokens are configured, so only loopback callers are served",
                ));
            }
            // A local reverse proxy connects from loopback on behalf of remote users;
            // the headers it adds are the only sign of them. Refuse rather than hand
            // every route, admin included, to whoever reaches the proxy.
            if PROXY_HEADERS.iter().any(|h| headers.contains_key(*h)) {
                return Err(Denied::Unauthorized(
                    "no API tokens are configured, so only local callers are served, and \
                     this request came through a proxy (it carries Forwarded, \
                     X-Forwarded-For or X-Real-IP): configure [auth] tokens to serve it",
                ));
            }
            return Ok(Caller::system());
        }
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(Denied::Unauthorized("missing bearer token"));
        };
        let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return Err(Denied::Unauthorized("authorization must be a bearer token"));
        };
        // Compare against every token, without stopping at the first match, so the
        // time taken does not tell which (or whether an early) token matched. Secrets
        // are distinct (`resolve` refuses duplicates), so at most one matches.
        let mut found = None;
        for (i, (_, _, secret)) in self.tokens.iter().enumerate() {
            if secret.matches(token) && found.is_none() {
                found = Some(i);
            }
        }
        let (name, role, _) = &self.tokens[found.ok_or(Denied::Unauthorized("unknown token"))?];
        Ok(Caller {
            name: name.clone(),
            admin: *role == Role::Admin,
        })
    }
}

/// May an authenticated `caller` do something that needs `needed`? The permission
/// step after [`ApiAuth::authenticate`]: a role check over the caller it returned,
/// no second look at the request.
pub fn permits(caller: &Caller, needed: Role) -> Result<(), Denied> {
    if Role::of(caller) >= needed {
        Ok(())
    } else {
        Err(Denied::Forbidden)
    }
}

impl Role {
    /// The role an authenticated caller holds.
    pub fn of(caller: &Caller) -> Role {
        if caller.admin {
            Role::Admin
        } else {
            Role::Client
        }
    }
}

/// Resolved peer rules: the cluster id every peer request carries, and the secret
/// that signs it (when configured). Clones share the replay store.
#[derive(Debug, Clone)]
pub struct PeerAuth {
    pub cluster_id: String,
    pub secret: Option<Secret>,
    /// Recently accepted signatures (receiving side only).
    seen: Arc<ReplayGuard>,
}

impl PeerAuth {
    pub fn new(cluster_id: impl Into<String>, secret: Option<Secret>) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            secret,
            seen: Arc::default(),
        }
    }

    /// Whether peer requests are signed (and must be): a cluster secret is configured.
    pub fn signs(&self) -> bool {
        self.secret.is_some()
    }

    /// Headers every outgoing peer request carries: the cluster id. The secret is
    /// never among them; each request is signed instead ([`PeerAuth::sign`]).
    pub fn outgoing_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&self.cluster_id) {
            h.insert(CLUSTER_HEADER, v);
        }
        h
    }

    /// The [`AUTH_HEADER`] value for a request (`None` without a cluster secret).
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Option<HeaderValue>, NonceError> {
        let Some(secret) = &self.secret else {
            return Ok(None);
        };
        let sig = self.signed(method, path, body).sign_now(secret.key())?;
        Ok(Some(header_value(&sig)))
    }

    /// [`PeerAuth::sign`] at a given time with a given nonce (tests: stale and
    /// replayed requests).
    pub fn sign_at(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        ts_ms: u64,
        nonce: [u8; signing::NONCE_LEN],
    ) -> Option<HeaderValue> {
        let secret = self.secret.as_ref()?;
        let sig = self
            .signed(method, path, body)
            .sign(secret.key(), ts_ms, nonce);
        Some(header_value(&sig))
    }

    fn signed<'a>(&'a self, method: &'a str, path: &'a str, body: &'a [u8]) -> Signed<'a> {
        Signed {
            cluster_id: &self.cluster_id,
            method,
            path,
            body,
        }
    }

    /// Check the cluster id of an incoming peer request (before reading its body).
    pub fn check_cluster(&self, headers: &HeaderMap) -> Result<(), PeerRefusal> {
        match headers.get(CLUSTER_HEADER) {
            Some(v) if v.as_bytes() == self.cluster_id.as_bytes() => Ok(()),
            Some(_) => Err(PeerRefusal::WrongCluster),
            None => Err(PeerRefusal::MissingCluster),
        }
    }

    /// Check an incoming peer request completely: cluster id, then (with a secret)
    /// signature, freshness against this host's clock, and replay.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), PeerRefusal> {
        self.check_at(method, path, headers, body, signing::wall_clock_ms())
    }

    /// [`PeerAuth::check`] with the receiver's clock at `now_ms`.
    pub fn check_at(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), PeerRefusal> {
        self.check_cluster(headers)?;
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        let value = headers.get(AUTH_HEADER).ok_or(PeerRefusal::MissingAuth)?;
        let sig = Signature::parse(value.as_bytes()).ok_or(PeerRefusal::MalformedAuth)?;
        if !signing::fresh(sig.ts_ms, now_ms) {
            return Err(PeerRefusal::Stale);
        }
        if !self.signed(method, path, body).verify(secret.key(), &sig) {
            return Err(PeerRefusal::BadMac);
        }
        // Only now, authenticated: remember it (so forgeries cannot fill the store).
        self.seen.admit(sig.ts_ms, sig.nonce, now_ms)
    }
}

fn header_value(sig: &Signature) -> HeaderValue {
    // Printable ASCII by construction (digits, hex, spaces, `=`).
    let mut v = HeaderValue::from_str(&sig.to_header())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    // A signature is no secret, but keep it out of debug logs of headers anyway.
    v.set_sensitive(true);
    v
}

impl AuthSection {
    /// Read every secret (files relative to `base`, the config file's directory).
    pub fn resolve(&self, cluster_id: &str, base: &Path) -> Result<(ApiAuth, PeerAuth), String> {
        let mut tokens = Vec::new();
        for t in &self.tokens {
            if t.name.is_empty() {
                return Err("auth.tokens: every token needs a name".into());
            }
            let what = format!("auth.tokens[{}]", t.name);
            let secret = read_secret(&what, &t.token, &t.token_file, &t.token_env, base)?
                .ok_or_else(|| format!("{what}: give token, token_file or token_env"))?;
            if tokens
                .iter()
                .any(|(_, _, s): &(String, Role, Secret)| s == &secret)
            {
                return Err(format!("{what}: two tokens have the same secret"));
            }
            tokens.push((t.name.clone(), t.role, secret));
        }
        let secret = read_secret(
            "auth.cluster_secret",
            &self.cluster_secret,
            &self.cluster_secret_file,
            &self.cluster_secret_env,
            base,
        )?;
        Ok((
            ApiAuth::with_tokens(tokens),
            PeerAuth::new(cluster_id, secret),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(
                axum::http::header::AUTHORIZATION,
                HeaderValue::from_str(a).unwrap(),
            );
        }
        h
    }

    /// Authentication then permission, the way the API runs them.
    fn check(
        r: &ApiAuth,
        h: &HeaderMap,
        peer: Option<SocketAddr>,
        needed: Role,
    ) -> Result<(), Denied> {
        permits(&r.authenticate(h, peer)?, needed)
    }

    fn rules() -> ApiAuth {
        ApiAuth::with_tokens(vec![
            (
                "svc".into(),
                Role::Client,
                Secret::new("client-token-0123456789"),
            ),
            (
                "ops".into(),
                Role::Admin,
                Secret::new("admin-token-0123456789"),
            ),
        ])
    }

    #[test]
    fn roles_and_tokens() {
        let r = rules();
        let lo: Option<SocketAddr> = Some("127.0.0.1:1".parse().unwrap());
        assert_eq!(
            check(&r, &headers(None), lo, Role::Client),
            Err(Denied::Unauthorized("missing bearer token"))
        );
        assert!(matches!(
            check(&r, &headers(Some("Bearer nope")), lo, Role::Client),
            Err(Denied::Unauthorized(_))
        ));
        assert!(matches!(
            check(&r, &headers(Some("Basic abc")), lo, Role::Client),
            Err(Denied::Unauthorized(_))
        ));
        assert_eq!(
            check(
                &r,
                &headers(Some("Bearer client-token-0123456789")),
                lo,
                Role::Client
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &r,
                &headers(Some("Bearer client-token-0123456789")),
                lo,
                Role::Admin
            ),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            check(
                &r,
                &headers(Some("Bearer admin-token-0123456789")),
                lo,
                Role::Admin
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &r,
                &headers(Some("Bearer admin-token-0123456789")),
                lo,
                Role::Client
            ),
            Ok(())
        );
        // Identity is worked out once and names the matched token.
        assert_eq!(
            r.authenticate(&headers(Some("Bearer client-token-0123456789")), lo),
            Ok(Caller {
                name: "svc".into(),
                admin: false
            })
        );
        assert_eq!(
            r.authenticate(&headers(Some("Bearer admin-token-0123456789")), lo),
            Ok(Caller {
                name: "ops".into(),
                admin: true
            })
        );
        // A prefix of a token is not the token.
        assert!(check(
            &r,
            &headers(Some("Bearer admin-token-012345678")),
            lo,
            Role::Client
        )
        .is_err());
    }

    #[test]
    fn open_mode_serves_loopback_only() {
        let r = ApiAuth::default();
        assert_eq!(
            check(
                &r,
                &headers(None),
                Some("127.0.0.1:9".parse().unwrap()),
                Role::Admin
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &r,
                &headers(None),
                Some("[::1]:9".parse().unwrap()),
                Role::Admin
            ),
            Ok(())
        );
        assert!(check(
            &r,
            &headers(None),
            Some("192.0.2.7:9".parse().unwrap()),
            Role::Client
        )
        .is_err());
        assert!(check(&r, &headers(None), None, Role::Client).is_err());
        // Every open-mode caller is the anonymous admin.
        assert_eq!(
            r.authenticate(&headers(None), Some("127.0.0.1:9".parse().unwrap())),
            Ok(Caller::system())
        );
    }

    #[test]
    fn open_mode_refuses_proxied_requests() {
        let r = ApiAuth::default();
        let lo = Some("127.0.0.1:9".parse().unwrap());
        for h in PROXY_HEADERS {
            let mut headers = HeaderMap::new();
            headers.insert(h, HeaderValue::from_static("203.0.113.9"));
            match check(&r, &headers, lo, Role::Client) {
                Err(Denied::Unauthorized(why)) => assert!(why.contains("proxy"), "{why}"),
                other => panic!("{h}: {other:?}"),
            }
        }
        // With tokens, proxies are fine: the token decides.
        let mut headers = headers(Some("Bearer admin-token-0123456789"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(check(&rules(), &headers, lo, Role::Admin), Ok(()));
    }

    fn request(p: &PeerAuth, path: &str, body: &[u8]) -> HeaderMap {
        let mut h = p.outgoing_headers();
        if let Some(v) = p.sign("POST", path, body).unwrap() {
            h.insert(AUTH_HEADER, v);
        }
        h
    }

    #[test]
    fn peers_need_cluster_id_and_a_valid_signature() {
        let secret = || Some(Secret::new("cluster-secret-0123456789"));
        let p = PeerAuth::new("prod", secret());
        let check = |h: &HeaderMap| p.check("POST", "/raft/vote", h, b"body");
        assert_eq!(check(&request(&p, "/raft/vote", b"body")), Ok(()));
        // The secret itself is on no header.
        let h = request(&p, "/raft/vote", b"body");
        assert!(h
            .iter()
            .all(|(_, v)| !v.as_bytes().windows(10).any(|w| w == b"secret-012")));
        let other = PeerAuth::new("staging", secret());
        assert_eq!(
            check(&request(&other, "/raft/vote", b"body")),
            Err(PeerRefusal::WrongCluster)
        );
        let unsigned = PeerAuth::new("prod", None);
        assert_eq!(
            check(&request(&unsigned, "/raft/vote", b"body")),
            Err(PeerRefusal::MissingAuth)
        );
        let wrong = PeerAuth::new("prod", Some(Secret::new("cluster-secret-9999999999")));
        assert_eq!(
            check(&request(&wrong, "/raft/vote", b"body")),
            Err(PeerRefusal::BadMac)
        );
        // Signed for another path or body: the MAC does not match.
        assert_eq!(
            check(&request(&p, "/forward/write", b"body")),
            Err(PeerRefusal::BadMac)
        );
        assert_eq!(
            check(&request(&p, "/raft/vote", b"bodz")),
            Err(PeerRefusal::BadMac)
        );
        let mut garbled = p.outgoing_headers();
        garbled.insert(AUTH_HEADER, HeaderValue::from_static("Bearer x"));
        assert_eq!(check(&garbled), Err(PeerRefusal::MalformedAuth));
        assert_eq!(check(&HeaderMap::new()), Err(PeerRefusal::MissingCluster));

        // Without a secret, the cluster id is all that is checked (loopback or mTLS
        // links only; see `links`).
        assert_eq!(
            unsigned.check("POST", "/raft/vote", &unsigned.outgoing_headers(), b""),
            Ok(())
        );
    }

    #[test]
    fn captured_and_old_requests_are_refused() {
        let p = PeerAuth::new("prod", Some(Secret::new("cluster-secret-0123456789")));
        let now = signing::wall_clock_ms();
        let captured = request(&p, "/raft/append", b"entries");
        assert_eq!(
            p.check("POST", "/raft/append", &captured, b"entries"),
            Ok(())
        );
        assert_eq!(
            p.check("POST", "/raft/append", &captured, b"entries"),
            Err(PeerRefusal::Replayed)
        );
        // A clone (the router's copy) shares what was seen.
        assert_eq!(
            p.clone()
                .check("POST", "/raft/append", &captured, b"entries"),
            Err(PeerRefusal::Replayed)
        );
        let window = u64::try_from(signing::SIGNATURE_WINDOW.as_millis()).unwrap();
        for ts in [now - window - 1_000, now + window + 1_000] {
            let mut h = p.outgoing_headers();
            h.insert(
                AUTH_HEADER,
                p.sign_at("POST", "/raft/append", b"e", ts, [3; 16])
                    .unwrap(),
            );
            assert_eq!(
                p.check_at("POST", "/raft/append", &h, b"e", now),
                Err(PeerRefusal::Stale)
            );
        }
        // Skew within the window is fine.
        let mut h = p.outgoing_headers();
        h.insert(
            AUTH_HEADER,
            p.sign_at("POST", "/raft/append", b"e", now - 5_000, [4; 16])
                .unwrap(),
        );
        assert_eq!(p.check_at("POST", "/raft/append", &h, b"e", now), Ok(()));
    }

    #[test]
    fn secrets_are_redacted_and_validated() {
        let s = AuthSection {
            tokens: vec![TokenSpec {
                name: "ops".into(),
                role: Role::Admin,
                token: Some("admin-token-0123456789".into()),
                token_file: None,
                token_env: None,
            }],
            cluster_secret: Some("cluster-secret-0123456789".into()),
            ..Default::default()
        };
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("admin-token"), "{dbg}");
        assert!(!dbg.contains("cluster-secret"), "{dbg}");
        let (api, peer) = s.resolve("c", Path::new(".")).unwrap();
        assert!(!format!("{api:?}{peer:?}").contains("token-0123"));
        let short = AuthSection {
            cluster_secret: Some("short".into()),
            ..Default::default()
        };
        assert!(short.resolve("c", Path::new(".")).is_err());
        let env = AuthSection {
            cluster_secret_env: Some("QUORATE_TEST_SURELY_UNSET_VAR".into()),
            ..Default::default()
        };
        assert!(env
            .resolve("c", Path::new("."))
            .unwrap_err()
            .contains("not set"));
    }
}
