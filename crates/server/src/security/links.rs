//! The startup rule for peer links: a link that leaves the host must be protected.
//!
//! On loopback only processes of this host can reach the Raft port, so a laptop
//! cluster (`quorate up`, the test suites) runs with the cluster id check alone. As
//! soon as any node's `raft_addr` (or a `QUORATE_PEER_ADDRS` override) is not a
//! loopback address, anyone on that network could forge votes, log entries and
//! forwarded writes, or read every key and lease id on the wire. Then the node
//! refuses to start unless `[tls]` is configured: the Raft port then requires a client
//! certificate signed by the cluster CA (mutual TLS), and the traffic is encrypted.
//! A cluster secret without TLS is refused too: its signatures authenticate requests,
//! but the traffic would still be readable and the answers unauthenticated.
//!
//! Host names other than `localhost` count as non-loopback: what they resolve to
//! is decided elsewhere (DNS, `/etc/hosts`, a container network) and can change.

use std::net::IpAddr;

/// Whether `addr` (`host:port`, `[v6]:port`) names a loopback address.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // `to_canonical` maps `::ffff:127.0.0.1` to 127.0.0.1.
    host.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Refuse a configuration whose peer traffic would leave the host unprotected.
/// `links` are `(what, addr)` pairs, e.g. `("node 2 raft_addr", "10.0.0.2:7202")`;
/// the message names the first non-loopback one and says how to fix it.
pub fn require_protected_peer_links<'a>(
    links: impl IntoIterator<Item = (String, &'a str)>,
    has_secret: bool,
    has_tls: bool,
) -> Result<(), String> {
    if has_tls {
        // Mutual TLS authenticates and encrypts every peer link, whatever its address.
        return Ok(());
    }
    let Some((what, addr)) = links.into_iter().find(|(_, a)| !is_loopback(a)) else {
        return Ok(());
    };
    const FIX: &str = "configure [tls] (cert_file, key_file, ca_file) on every node: the Raft \
        port then requires a client certificate signed by ca_file (mutual TLS; node \
        certificates need extendedKeyUsage serverAuth and clientAuth, as \
        scripts/make_test_ca.sh makes them) and peer traffic is encrypted; and set \
        auth.cluster_secret_env or auth.cluster_secret_file (the same secret on every node) \
        so every peer request is also signed";
    if has_secret {
        Err(format!(
            "{what} {addr:?} is not a loopback address and [tls] is not configured: \
             auth.cluster_secret would protect peer requests crossing the network in clear \
             text (anyone on the path reads every key, lease and log entry). To fix: {FIX}"
        ))
    } else {
        Err(format!(
            "{what} {addr:?} is not a loopback address and peers are not authenticated: \
             anyone who can reach a Raft port could forge votes, log entries and forwarded \
             writes. To fix: {FIX}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1:7201",
            "127.8.9.10:1",
            "[::1]:7201",
            "localhost:7201",
            "LocalHost:1",
            "[::ffff:127.0.0.1]:9",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "10.0.0.2:7202",
            "0.0.0.0:7201",
            "[::]:7201",
            "q1:7201",
            "localhost.example.com:1",
            "192.0.2.1:1",
            "[2001:db8::1]:1",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    fn links(addrs: &[&'static str]) -> Vec<(String, &'static str)> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("node {} raft_addr", i + 1), *a))
            .collect()
    }

    #[test]
    fn loopback_clusters_need_nothing() {
        let l = links(&["127.0.0.1:1", "localhost:2", "[::1]:3"]);
        assert_eq!(
            require_protected_peer_links(l.clone(), false, false),
            Ok(())
        );
        assert_eq!(require_protected_peer_links(l, true, false), Ok(()));
    }

    #[test]
    fn non_loopback_links_need_tls() {
        let l = links(&["127.0.0.1:1", "10.0.0.2:2"]);
        let m = require_protected_peer_links(l.clone(), false, false).unwrap_err();
        assert!(m.contains("node 2 raft_addr \"10.0.0.2:2\""), "{m}");
        assert!(m.contains("not authenticated"), "{m}");
        assert!(m.contains("configure [tls]"), "{m}");
        assert!(m.contains("auth.cluster_secret_env"), "{m}");
        assert!(m.contains("clientAuth"), "{m}");

        let m = require_protected_peer_links(l.clone(), true, false).unwrap_err();
        assert!(m.contains("clear text"), "{m}");
        assert!(m.contains("configure [tls]"), "{m}");

        assert_eq!(require_protected_peer_links(l.clone(), false, true), Ok(()));
        assert_eq!(require_protected_peer_links(l, true, true), Ok(()));
    }
}
