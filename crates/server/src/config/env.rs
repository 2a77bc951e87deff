//! The environment layer of the configuration: `QUORATE_*` variables.
//!
//! `QUORATE_<SECTION>_<KEY>` overrides `key` of `[section]` for the sections whose
//! keys are plain numbers (`raft`, `limits`, `server`), and `QUORATE_CLUSTER_ID` /
//! `QUORATE_DATA_DIR` override the top-level keys. Section and key are split at the
//! first `_` after the section name, because keys contain underscores themselves
//! (`QUORATE_RAFT_HEARTBEAT_INTERVAL_MS` → `raft.heartbeat_interval_ms`). Other
//! `QUORATE_*` variables (`QUORATE_LOG`, the test-only ones below) are not
//! configuration and are ignored by this layer. A misspelt key inside a known section
//! is an error (the sections deny unknown fields), naming the variable.
//!
//! Two variables are for testing, not for production configuration:
//! - `QUORATE_PEER_ADDRS="2=127.0.0.1:41002,3=127.0.0.1:41003"` makes *this* node send
//!   everything it sends to peer 2 (Raft RPCs, forwarded requests, bootstrap probes) to
//!   `127.0.0.1:41002` instead of peer 2's `raft_addr`, and likewise for 3. Other peers
//!   keep their `raft_addr`; ids need not be in the file yet (a node added later).
//!   The chaos suite (`tests/chaos.rs`) uses it to route each directed link through a
//!   proxy it can cut. Parsed into `ClusterConfig::peer_addrs`; a malformed value
//!   stops the node at startup.
//! - `QUORATE_PLANTED_BUG=follower-local-grant` (only in builds with the
//!   `planted-bugs` feature) makes followers grant acquires without Raft: a deliberate
//!   bug that proves the chaos checker can fail. See `raft/planted.rs`.

use std::collections::BTreeMap;

use figment::providers::Env;
use figment::value::UncasedStr;

/// Prefix of environment variables that override file values.
pub const ENV_PREFIX: &str = "QUORATE_";

/// Per-peer outgoing address overrides (`id=host:port,...`).
pub const PEER_ADDRS_ENV: &str = "QUORATE_PEER_ADDRS";

/// Sections whose keys may be overridden by `QUORATE_<SECTION>_<KEY>` variables.
const SECTIONS: [&str; 3] = ["raft", "limits", "server"];

/// `rest` (the variable's name without the prefix, any case) as a config key path,
/// or `None` when the variable is not configuration.
fn key_path(rest: &str) -> Option<String> {
    let rest = rest.to_ascii_lowercase();
    if rest == "cluster_id" || rest == "data_dir" {
        return Some(rest);
    }
    SECTIONS.iter().find_map(|s| {
        rest.strip_prefix(s)
            .and_then(|k| k.strip_prefix('_'))
            .filter(|k| !k.is_empty())
            .map(|k| format!("{s}.{k}"))
    })
}

/// The figment provider of the environment layer.
pub fn provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|k: &UncasedStr| key_path(k.as_str()).is_some())
        .map(|k: &UncasedStr| key_path(k.as_str()).unwrap_or_default().into())
}

/// Names of the configuration variables set in this process (for error messages).
pub fn applied_vars() -> Vec<String> {
    let mut v: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| {
            k.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| key_path(rest).is_some())
        })
        .collect();
    v.sort();
    v
}

/// `QUORATE_PEER_ADDRS` of this process, parsed (empty when unset).
pub fn peer_addrs_from_process() -> Result<BTreeMap<u64, String>, String> {
    match std::env::var(PEER_ADDRS_ENV) {
        Ok(v) => parse_peer_addrs(&v).map_err(|m| format!("{PEER_ADDRS_ENV}: {m}")),
        Err(_) => Ok(BTreeMap::new()),
    }
}

/// `id=host:port` pairs separated by commas (blank = none).
pub fn parse_peer_addrs(value: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut map = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("{pair:?}: node id must be a positive integer"))?;
        let addr = addr.trim();
        super::validate::check_addr(addr).map_err(|m| format!("{pair:?}: {m}"))?;
        if map.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is named twice"));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    // Peer address parsing is tested through the whole loader in `config::tests`.

    #[test]
    fn variables_map_to_key_paths() {
        assert_eq!(
            key_path("RAFT_HEARTBEAT_INTERVAL_MS").as_deref(),
            Some("raft.heartbeat_interval_ms")
        );
        assert_eq!(key_path("data_dir").as_deref(), Some("data_dir"));
        assert_eq!(key_path("LOG"), None);
        assert_eq!(key_path("PEER_ADDRS"), None);
        assert_eq!(key_path("RAFT_"), None);
        assert_eq!(key_path("RAFTY_X"), None);
    }
}
