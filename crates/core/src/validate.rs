//! Input rules, enforced inside the state machine so that every replica rejects the
//! same ops, whatever the API layer checked first.
//!
//! Keys, lease ids and names are ASCII from a small documented charset so they are
//! safe in URLs, logs and Prometheus labels, and so that no two byte strings that look
//! alike on a terminal name different buckets:
//!
//! | what | length | characters |
//! |---|---|---|
//! | key | 1..=256 | `A-Z a-z 0-9 _ - . : / @ + =` |
//! | lease id | 1..=128 | same as keys |
//! | policy / tier name | 1..=64 | `A-Z a-z 0-9 _ - . :` |
//! | policy pattern | a key, optionally ending in `*`; or `*` | |
//! | holder | 0..=256 bytes | any UTF-8 without control characters |

use crate::command::{RateSpec, Settings};
use crate::error::CoreError;

/// Most keys one acquire may take slots on.
pub const MAX_KEYS: usize = 8;
/// Most checks in one rate-check op.
pub const MAX_CHECKS: usize = 16;
pub const MAX_KEY_LEN: usize = 256;
pub const MAX_LEASE_ID_LEN: usize = 128;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_HOLDER_LEN: usize = 256;
/// Tier multipliers are thousandths: 1 (×0.001) ..= 1_000_000 (×1000).
pub const MAX_MULTIPLIER_MILLI: u32 = 1_000_000;

fn key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':' | b'/' | b'@' | b'+' | b'=')
}

fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b':')
}

/// Non-empty and at most `max` bytes: the length rule every text field shares.
pub(crate) fn check_len(field: &str, s: &str, max: usize) -> Result<(), CoreError> {
    if s.is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(CoreError::invalid(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(())
}

fn check_chars(field: &str, s: &str, max: usize, ok: fn(u8) -> bool) -> Result<(), CoreError> {
    check_len(field, s, max)?;
    // Report the character as sent (not its first UTF-8 byte read as Latin-1).
    if let Some(c) = s.chars().find(|c| !u8::try_from(*c).is_ok_and(ok)) {
        return Err(CoreError::invalid(
            field,
            format!("character {c:?} not allowed"),
        ));
    }
    Ok(())
}

/// A slot or rate key.
pub fn key(field: &str, k: &str) -> Result<(), CoreError> {
    check_chars(field, k, MAX_KEY_LEN, key_char)
}

/// A lease id (the idempotency key of an acquire).
pub fn lease_id(id: &str) -> Result<(), CoreError> {
    check_chars("lease_id", id, MAX_LEASE_ID_LEN, key_char)
}

/// A policy or tier name.
pub fn name(field: &str, n: &str) -> Result<(), CoreError> {
    check_chars(field, n, MAX_NAME_LEN, name_char)
}

/// A concurrency policy pattern: an exact key, a prefix ending in `*`, or `*`.
pub fn pattern(p: &str) -> Result<(), CoreError> {
    if p == "*" {
        return Ok(());
    }
    key("pattern", p.strip_suffix('*').unwrap_or(p))
}

/// Free-text holder description.
pub fn holder(h: &str) -> Result<(), CoreError> {
    if h.len() > MAX_HOLDER_LEN {
        return Err(CoreError::invalid(
            "holder",
            format!("longer than {MAX_HOLDER_LEN} bytes"),
        ));
    }
    if h.chars().any(char::is_control) {
        return Err(CoreError::invalid(
            "holder",
            "control characters not allowed",
        ));
    }
    Ok(())
}

/// The key list of an acquire: 1..=8 valid, distinct keys.
pub fn acquire_keys(keys: &[String]) -> Result<(), CoreError> {
    if keys.is_empty() {
        return Err(CoreError::invalid("keys", "at least one key is required"));
    }
    if keys.len() > MAX_KEYS {
        return Err(CoreError::invalid(
            "keys",
            format!("at most {MAX_KEYS} keys per acquire"),
        ));
    }
    for (i, k) in keys.iter().enumerate() {
        key("keys", k)?;
        if keys[..i].contains(k) {
            return Err(CoreError::invalid("keys", format!("duplicate key {k}")));
        }
    }
    Ok(())
}

/// A concurrency limit.
pub fn limit(field: &str, l: u32, s: &Settings) -> Result<(), CoreError> {
    if l == 0 || l > s.max_limit {
        return Err(CoreError::invalid(
            field,
            format!("must be in 1..={}", s.max_limit),
        ));
    }
    Ok(())
}

/// A lease TTL.
pub fn ttl(t: u64, s: &Settings) -> Result<(), CoreError> {
    if t == 0 || t > s.max_ttl_ms {
        return Err(CoreError::invalid(
            "ttl_ms",
            format!("must be in 1..={}", s.max_ttl_ms),
        ));
    }
    Ok(())
}

/// A rate spec (limit per period with burst).
pub fn rate_spec(r: &RateSpec, s: &Settings) -> Result<(), CoreError> {
    limit("limit", r.limit, s)?;
    limit("burst", r.burst, s)?;
    if r.period_ms == 0 || r.period_ms > s.max_period_ms {
        return Err(CoreError::invalid(
            "period_ms",
            format!("must be in 1..={}", s.max_period_ms),
        ));
    }
    Ok(())
}

/// Cluster settings: caps must be positive and consistent.
pub fn settings(s: &Settings) -> Result<(), CoreError> {
    if s.max_limit == 0 {
        return Err(CoreError::invalid("max_limit", "must be at least 1"));
    }
    limit("default_limit", s.default_limit, s)?;
    if s.max_ttl_ms == 0 {
        return Err(CoreError::invalid("max_ttl_ms", "must be at least 1"));
    }
    if s.max_retry_after_ms == 0 {
        return Err(CoreError::invalid(
            "max_retry_after_ms",
            "must be at least 1",
        ));
    }
    if s.max_period_ms == 0 {
        return Err(CoreError::invalid("max_period_ms", "must be at least 1"));
    }
    // Zero caps would refuse every new lease or bucket: a misconfiguration, not a
    // policy (the way to forbid acquires is a token's role).
    for (field, v) in [
        ("max_leases", s.max_leases),
        ("max_slot_keys", s.max_slot_keys),
        ("max_rate_keys", s.max_rate_keys),
    ] {
        if v == 0 {
            return Err(CoreError::invalid(field, "must be at least 1"));
        }
    }
    Ok(())
}

/// A tier multiplier in thousandths.
pub fn multiplier(m: u32) -> Result<(), CoreError> {
    if m == 0 || m > MAX_MULTIPLIER_MILLI {
        return Err(CoreError::invalid("multiplier", "must be in 0.001..=1000"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(key("k", "org:acme").is_ok());
        assert!(key("k", "ip:2001:db8::1").is_ok());
        assert!(key("k", "").is_err());
        assert!(key("k", "a b").is_err());
        assert!(key("k", "org:*").is_err());
        assert!(key("k", &"x".repeat(256)).is_ok());
        assert!(key("k", &"x".repeat(257)).is_err());
        assert!(key("k", "é").is_err());
    }

    #[test]
    fn patterns() {
        assert!(pattern("*").is_ok());
        assert!(pattern("org:*").is_ok());
        assert!(pattern("global").is_ok());
        assert!(pattern("org:*:x").is_err());
        assert!(pattern("**").is_err());
    }

    #[test]
    fn acquire_key_lists() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(acquire_keys(&k(&["a", "b"])).is_ok());
        assert!(acquire_keys(&k(&[])).is_err());
        assert!(acquire_keys(&k(&["a", "a"])).is_err());
        assert!(acquire_keys(&k(&["1", "2", "3", "4", "5", "6", "7", "8"])).is_ok());
        assert!(acquire_keys(&k(&["1", "2", "3", "4", "5", "6", "7", "8", "9"])).is_err());
    }

    #[test]
    fn holders() {
        assert!(holder("worker-7 (pid 42)").is_ok());
        assert!(holder("a\nb").is_err());
        assert!(holder(&"x".repeat(257)).is_err());
    }
}
