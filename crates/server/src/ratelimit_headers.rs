//! The RateLimit header fields, built once for HTTP (`/v1/rate/check`) and gRPC (the
//! Envoy service's `response_headers_to_add`).
//!
//! Shape: draft-ietf-httpapi-ratelimit-headers-10. Both fields are Structured Field
//! Lists (RFC 8941) with one item per quota, named by its **policy** (a string):
//!
//! ```text
//! RateLimit-Policy: "user";q=300;w=60;pk=:mH8c0kQ2qf5VvDxX:;quorate-burst=300
//! RateLimit: "user";r=299;t=1;pk=:mH8c0kQ2qf5VvDxX:
//! ```
//!
//! - `q` the quota per window, `w` the window in whole seconds (rounded up), `r` the
//!   requests left now, `t` seconds until the quota is whole again (rounded up).
//! - `pk`, the partition key, is a Byte Sequence: the first 12 bytes of SHA-256 of the
//!   bucket key — enough to tell two partitions of one policy apart (two checks of
//!   the `user` policy on different keys), never the key itself, which may be a user
//!   id or an address (the draft warns that a partition key must not leak what it
//!   identifies).
//! - Vendor parameters carry the `quorate-` prefix: `quorate-burst`, the bucket size
//!   (GCRA lets up to `burst` requests through at once, then `q` per `w`).
//!
//! The `X-RateLimit-Limit` / `-Remaining` / `-Reset` trio of the most restrictive
//! quota stays for older clients.

use sha2::{Digest, Sha256};

/// One quota as the headers describe it.
#[derive(Debug, Clone, Copy)]
pub struct Quota<'a> {
    /// Policy name (the item's value).
    pub policy: &'a str,
    /// The bucket key; only its hash is sent.
    pub key: &'a str,
    pub limit: u32,
    pub period_ms: u64,
    pub burst: u32,
    pub remaining: u32,
    pub reset_after_ms: u64,
}

/// Structured-field string (RFC 8941 §3.3.3): printable ASCII, with `"` and `\`
/// escaped; anything else becomes `?` (policy names are ASCII by validation).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// Standard base64 with padding (RFC 4648), as SF byte sequences use.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `pk` parameter of a bucket key: `:<base64 of 12 bytes of SHA-256>:`.
pub fn partition_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!(":{}:", base64(&digest[..12]))
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// The header fields for `quotas` (one list item each, in order), with the
/// `X-RateLimit-*` trio taken from `top`. Names are lower case (HTTP/2 and gRPC
/// metadata require it; HTTP/1 is case-insensitive).
pub fn fields(quotas: &[Quota<'_>], top: &Quota<'_>) -> Vec<(&'static str, String)> {
    // One digest per quota, shared by both fields.
    let keys: Vec<String> = quotas.iter().map(|q| partition_key(q.key)).collect();
    // A structured-field list: one item per quota, named by its policy.
    let list = |params: &dyn Fn(&Quota<'_>, &str) -> String| {
        quotas
            .iter()
            .zip(&keys)
            .map(|(q, pk)| format!("{};{}", sf_string(q.policy), params(q, pk)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let policy = list(&|q, pk| {
        format!(
            "q={};w={};pk={pk};quorate-burst={}",
            q.limit,
            secs(q.period_ms).max(1),
            q.burst
        )
    });
    let state = list(&|q, pk| format!("r={};t={};pk={pk}", q.remaining, secs(q.reset_after_ms)));
    vec![
        ("ratelimit-policy", policy),
        ("ratelimit", state),
        ("x-ratelimit-limit", top.limit.to_string()),
        ("x-ratelimit-remaining", top.remaining.to_string()),
        ("x-ratelimit-reset", secs(top.reset_after_ms).to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q<'a>(policy: &'a str, key: &'a str) -> Quota<'a> {
        Quota {
            policy,
            key,
            limit: 300,
            period_ms: 60_000,
            burst: 50,
            remaining: 299,
            reset_after_ms: 200,
        }
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn fields_follow_draft_10_and_never_carry_the_key() {
        let a = q("user", "user:alice@example.com");
        let b = q("ip", "ip:203.0.113.9");
        let f = fields(&[a, b], &a);
        let get = |n: &str| f.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        let pk = partition_key("user:alice@example.com");
        assert_eq!(
            pk.len(),
            18,
            "12 bytes are 16 base64 characters between colons"
        );
        assert_eq!(
            get("ratelimit-policy"),
            format!(
                "\"user\";q=300;w=60;pk={pk};quorate-burst=50, \"ip\";q=300;w=60;pk={};quorate-burst=50",
                partition_key("ip:203.0.113.9")
            )
        );
        assert_eq!(
            get("ratelimit").split(", ").next().unwrap(),
            format!("\"user\";r=299;t=1;pk={pk}")
        );
        for (_, v) in &f {
            assert!(!v.contains("alice") && !v.contains("203.0.113.9"), "{v}");
        }
        assert_eq!(get("x-ratelimit-remaining"), "299");
        assert_eq!(get("x-ratelimit-reset"), "1");
        assert_eq!(sf_string("a\"b\\c\u{e9}"), "\"a\\\"b\\\\c?\"");
    }
}
