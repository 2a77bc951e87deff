//! Signed peer requests: the cluster secret authenticates every peer request without
//! ever crossing the wire.
//!
//! With `auth.cluster_secret*` configured, the sender puts one header on every peer
//! request ([`AUTH_HEADER`](crate::peer::protocol::AUTH_HEADER)):
//!
//! ```text
//! x-quorate-auth: v1 ts=<unix milliseconds> nonce=<32 hex digits> mac=<64 hex digits>
//! ```
//!
//! `mac` is HMAC-SHA256, keyed by the secret, over a length-prefixed encoding of: a
//! version label, the cluster id, the method, the path (with query, if any), the
//! timestamp, the nonce and the SHA-256 of the body. A captured request therefore
//! cannot be altered (any change breaks the MAC) and the secret cannot be learnt from
//! it. The receiver ([`super::PeerAuth::check`]):
//!
//! 1. refuses a timestamp more than [`SIGNATURE_WINDOW`] away from its own wall clock
//!    (`stale`) — a captured request is useless after that;
//! 2. recomputes the MAC and compares in constant time (`bad_mac`);
//! 3. remembers the `(timestamp, nonce)` of every request that passed 1 and 2 for as
//!    long as it could still pass 1, and refuses one it has seen (`replayed`) — a
//!    captured request is useless *within* the window too.
//!
//! Only authenticated requests are remembered, so an attacker cannot fill the store;
//! it is still bounded ([`MAX_REMEMBERED_NONCES`]) against a burst of real traffic.
//! When full, the oldest entry is dropped and its timestamp becomes a floor: anything
//! signed at or before it is refused (`replay_store_full`). A replay of a forgotten
//! request carries a timestamp at or below the floor, so forgetting never re-opens a
//! replay; the cost is that, under such load, the effective window shrinks.
//!
//! Not covered by the MAC: the timeout header (the receiver caps it with its own
//! request timeout anyway) and the response (integrity of answers comes from TLS,
//! which every non-loopback peer link must use; see [`super::links`]).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a request's timestamp may be from the receiver's wall clock, either way.
/// Node clocks are expected to be NTP-synchronised (skew of seconds, not minutes); a
/// request also spends up to the caller's timeout in flight. 30 s covers both while
/// keeping the replay store small.
pub const SIGNATURE_WINDOW: Duration = Duration::from_secs(30);

/// Most `(timestamp, nonce)` pairs a node remembers (about 24 bytes each, so a few
/// MiB): 2^18 requests within the 60 s span of the window is over 4000 peer requests
/// a second, sustained. Beyond it the window shrinks instead of growing the store.
pub const MAX_REMEMBERED_NONCES: usize = 1 << 18;

/// Random bytes per request.
pub const NONCE_LEN: usize = 16;

/// Label at the start of the header and of the MAC input: a future format must not be
/// mistaken for this one.
const VERSION: &str = "v1";

/// Why a peer request was refused. [`PeerRefusal::reason`] is the label of the
/// `quorate_peer_rejected` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error("the request names another cluster id")]
    WrongCluster,
    #[error("the request carries no cluster id header")]
    MissingCluster,
    #[error(
        "the request carries no signature (x-quorate-auth) but a cluster secret is configured"
    )]
    MissingAuth,
    #[error("the signature header is malformed")]
    MalformedAuth,
    #[error("the signature's timestamp is outside the accepted window (clock skew or a captured request)")]
    Stale,
    #[error("the signature does not match (wrong secret or altered request)")]
    BadMac,
    #[error("this signed request was already received (replay)")]
    Replayed,
    #[error(
        "too many recent peer requests to remember; this one is older than the oldest remembered"
    )]
    ReplayStoreFull,
    #[error("the request body exceeds the peer body limit")]
    TooLarge,
    #[error("the request body could not be read")]
    BadBody,
    #[error("the client certificate names no node (subjectAltName quorate://node/<id>)")]
    NoNodeName,
    #[error("the request claims to come from another node than its client certificate names")]
    WrongNode,
}

impl PeerRefusal {
    /// The metric label (`quorate_peer_rejected_total{reason="..."}`).
    pub fn reason(self) -> &'static str {
        match self {
            PeerRefusal::WrongCluster => "wrong_cluster",
            PeerRefusal::MissingCluster => "missing_cluster",
            PeerRefusal::MissingAuth => "missing_auth",
            PeerRefusal::MalformedAuth => "malformed_auth",
            PeerRefusal::Stale => "stale",
            PeerRefusal::BadMac => "bad_mac",
            PeerRefusal::Replayed => "replayed",
            PeerRefusal::ReplayStoreFull => "replay_store_full",
            PeerRefusal::TooLarge => "too_large",
            PeerRefusal::BadBody => "bad_body",
            PeerRefusal::NoNodeName => "no_node_name",
            PeerRefusal::WrongNode => "wrong_node",
        }
    }
}

/// The OS's random source failed (the request is not sent unsigned).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot draw a random nonce: {0}")]
pub struct NonceError(String);

/// One request's signature, as carried in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    pub ts_ms: u64,
    pub nonce: [u8; NONCE_LEN],
    pub mac: [u8; 32],
}

/// What a request is signed over (besides the key).
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub cluster_id: &'a str,
    pub method: &'a str,
    /// Path and query exactly as sent (`/raft/append`).
    pub path: &'a str,
    pub body: &'a [u8],
}

impl Signed<'_> {
    /// The MAC state after absorbing everything signed. Every field is
    /// length-prefixed, so no two different requests encode to the same bytes.
    fn mac(&self, key: &[u8], ts_ms: u64, nonce: &[u8; NONCE_LEN]) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        let body_hash = Sha256::digest(self.body);
        let ts = ts_ms.to_be_bytes();
        for field in [
            VERSION.as_bytes(),
            self.cluster_id.as_bytes(),
            self.method.as_bytes(),
            self.path.as_bytes(),
            &ts,
            nonce,
            &body_hash,
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// Sign at `ts_ms` with `nonce` (callers other than tests use
    /// [`Signed::sign_now`]).
    pub fn sign(&self, key: &[u8], ts_ms: u64, nonce: [u8; NONCE_LEN]) -> Signature {
        let mac = self.mac(key, ts_ms, &nonce).finalize().into_bytes();
        Signature {
            ts_ms,
            nonce,
            mac: mac.into(),
        }
    }

    /// Sign with the wall clock and a fresh random nonce.
    pub fn sign_now(&self, key: &[u8]) -> Result<Signature, NonceError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| NonceError(e.to_string()))?;
        Ok(self.sign(key, wall_clock_ms(), nonce))
    }

    /// Whether `sig` is this request's MAC under `key`, compared in constant time.
    pub fn verify(&self, key: &[u8], sig: &Signature) -> bool {
        self.mac(key, sig.ts_ms, &sig.nonce)
            .verify_slice(&sig.mac)
            .is_ok()
    }
}

impl Signature {
    /// The header value: `v1 ts=<ms> nonce=<hex> mac=<hex>`.
    pub fn to_header(&self) -> String {
        format!(
            "{VERSION} ts={} nonce={} mac={}",
            self.ts_ms,
            hex(&self.nonce),
            hex(&self.mac)
        )
    }

    /// Parse a header value; `None` unless it is exactly the format above.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(' ');
        if parts.next()? != VERSION {
            return None;
        }
        let ts = parts.next()?.strip_prefix("ts=")?;
        // Digits only: `u64::from_str` would also take a leading `+`.
        if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let ts_ms = ts.parse().ok()?;
        let nonce = unhex(parts.next()?.strip_prefix("nonce=")?)?;
        let mac = unhex(parts.next()?.strip_prefix("mac=")?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self { ts_ms, nonce, mac })
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Lower-case hex of exactly `N` bytes.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Milliseconds since the Unix epoch by this host's clock (0 if it is set before
/// 1970, which makes every signature stale rather than panicking).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `ts_ms` is within [`SIGNATURE_WINDOW`] of `now_ms`.
pub fn fresh(ts_ms: u64, now_ms: u64) -> bool {
    ts_ms.abs_diff(now_ms) <= window_ms()
}

fn window_ms() -> u64 {
    u64::try_from(SIGNATURE_WINDOW.as_millis()).unwrap_or(u64::MAX)
}

/// The `(timestamp, nonce)` pairs of recently accepted requests (see the module
/// documentation for the bound and the floor).
#[derive(Debug)]
pub struct ReplayGuard {
    inner: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    /// Ordered by timestamp, so expiry and eviction take the oldest first. A replay
    /// carries the same timestamp and nonce (both are under the MAC), so the pair is
    /// also the lookup key.
    set: BTreeSet<(u64, [u8; NONCE_LEN])>,
    /// Timestamps at or below this were evicted unexpired: refuse them.
    floor: Option<u64>,
    capacity: usize,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_capacity(MAX_REMEMBERED_NONCES)
    }
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` requests (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Seen {
                set: BTreeSet::new(),
                floor: None,
                capacity: capacity.max(1),
            }),
        }
    }

    /// Admit a request signed at `ts_ms` with `nonce` (already fresh and
    /// authenticated), or refuse it as a replay.
    pub fn admit(
        &self,
        ts_ms: u64,
        nonce: [u8; NONCE_LEN],
        now_ms: u64,
    ) -> Result<(), PeerRefusal> {
        // A poisoned lock only means another thread panicked mid-update of a set of
        // plain values; the set is still usable.
        let mut seen = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Forget what can no longer pass the freshness check anyway.
        let oldest_fresh = now_ms.saturating_sub(window_ms());
        while seen.set.first().is_some_and(|(ts, _)| *ts < oldest_fresh) {
            seen.set.pop_first();
        }
        if seen.floor.is_some_and(|f| f < oldest_fresh) {
            seen.floor = None;
        }
        if seen.floor.is_some_and(|f| ts_ms <= f) {
            return Err(PeerRefusal::ReplayStoreFull);
        }
        if !seen.set.insert((ts_ms, nonce)) {
            return Err(PeerRefusal::Replayed);
        }
        while seen.set.len() > seen.capacity {
            if let Some((ts, _)) = seen.set.pop_first() {
                seen.floor = Some(seen.floor.map_or(ts, |f| f.max(ts)));
            }
        }
        Ok(())
    }

    /// How many requests are remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"cluster-secret-0123456789";

    fn req(body: &[u8]) -> Signed<'_> {
        Signed {
            cluster_id: "prod",
            method: "POST",
            path: "/raft/append",
            body,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_variants() {
        let sig = req(b"x").sign(KEY, 1_700_000_000_123, [7; NONCE_LEN]);
        let h = sig.to_header();
        assert!(h.starts_with("v1 ts=1700000000123 nonce=0707"), "{h}");
        assert_eq!(Signature::parse(h.as_bytes()), Some(sig));
        for bad in [
            String::new(),
            h.replacen("v1", "v2", 1),
            h.replacen("ts=", "ts=+", 1),
            h.replacen("ts=1700000000123", "ts=", 1),
            format!("{h} extra"),
            h.replacen("nonce=07", "nonce=0", 1),
            h.to_uppercase(),
            h.replace(' ', "  "),
            h[..h.len() - 2].to_string(),
        ] {
            assert_eq!(Signature::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn every_signed_field_matters() {
        let base = req(b"body");
        let sig = base.sign(KEY, 1000, [1; NONCE_LEN]);
        assert!(base.verify(KEY, &sig));
        assert!(!base.verify(b"cluster-secret-9999999999", &sig));
        for other in [
            Signed {
                cluster_id: "staging",
                ..base
            },
            Signed {
                method: "GET",
                ..base
            },
            Signed {
                path: "/forward/write",
                ..base
            },
            Signed {
                body: b"bodz",
                ..base
            },
        ] {
            assert!(!other.verify(KEY, &sig), "{other:?}");
        }
        assert!(!base.verify(KEY, &Signature { ts_ms: 1001, ..sig }));
        assert!(!base.verify(
            KEY,
            &Signature {
                nonce: [2; NONCE_LEN],
                ..sig
            }
        ));
        // Nonces are random: two signatures of one request differ.
        let (a, b) = (base.sign_now(KEY).unwrap(), base.sign_now(KEY).unwrap());
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn freshness_is_symmetric_around_now() {
        let w = window_ms();
        let now = 10 * w;
        assert!(fresh(now, now));
        assert!(fresh(now - w, now));
        assert!(fresh(now + w, now));
        assert!(!fresh(now - w - 1, now));
        assert!(!fresh(now + w + 1, now));
        assert!(!fresh(0, now));
    }

    #[test]
    fn replays_are_refused_until_they_are_stale() {
        let g = ReplayGuard::default();
        let now = 1_000_000;
        assert_eq!(g.admit(now, [1; NONCE_LEN], now), Ok(()));
        assert_eq!(
            g.admit(now, [1; NONCE_LEN], now + 5),
            Err(PeerRefusal::Replayed)
        );
        // Same nonce, different timestamp: a different (separately MACed) request.
        assert_eq!(g.admit(now + 1, [1; NONCE_LEN], now + 5), Ok(()));
        // Once the window has passed, entries are dropped (the freshness check
        // refuses such a request before it gets here).
        let later = now + window_ms() + 2;
        assert_eq!(g.admit(later, [9; NONCE_LEN], later), Ok(()));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_full_store_raises_a_floor_instead_of_forgetting_replays() {
        let g = ReplayGuard::with_capacity(3);
        let now = 1_000_000;
        for i in 0..3u8 {
            assert_eq!(g.admit(now + u64::from(i), [i; NONCE_LEN], now), Ok(()));
        }
        // A fourth evicts the oldest (ts = now): replaying it must still fail.
        assert_eq!(g.admit(now + 3, [3; NONCE_LEN], now), Ok(()));
        assert_eq!(g.len(), 3);
        assert_eq!(
            g.admit(now, [0; NONCE_LEN], now),
            Err(PeerRefusal::ReplayStoreFull)
        );
        assert_eq!(
            g.admit(now + 1, [1; NONCE_LEN], now),
            Err(PeerRefusal::Replayed)
        );
        // Newer requests still pass.
        assert_eq!(g.admit(now + 10, [10; NONCE_LEN], now), Ok(()));
        // Once the floor is older than the window it no longer applies.
        let later = now + window_ms() + 100;
        assert_eq!(g.admit(later, [11; NONCE_LEN], later), Ok(()));
    }
}
