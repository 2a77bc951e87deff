//! Optional TLS (rustls, ring provider) for the public API and between peers.
//!
//! With a `[tls]` section in `cluster.toml`, every listener of the node (API and Raft)
//! speaks TLS with `cert_file`/`key_file`, and the node talks to its peers over https,
//! trusting only the CA in `ca_file` (not the system's roots: peers are ours). Clients
//! and the CLI trust the same CA (`--ca-file`). `scripts/make_test_ca.sh` makes a CA
//! and a loopback certificate for local use.
//!
//! Peer authentication stays with the cluster secret (`auth.rs`); TLS adds
//! confidentiality and server authentication on the wire. The files are read once,
//! at startup ([`super::Security`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// `[tls]` of `cluster.toml` (paths relative to the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of this node (its SANs must cover the addresses peers
    /// and clients use, e.g. `IP:127.0.0.1`).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA certificate that signed every node's certificate.
    pub ca_file: PathBuf,
}

/// Loaded TLS material.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The CA, for the peer client.
    pub ca_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(<acceptor>)")
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("tls.{what}: cannot read {}: {e}", path.display()))
}

impl TlsSection {
    /// Load certificate, key and CA (paths relative to `base`).
    pub fn load(&self, base: &Path) -> Result<Tls, String> {
        let abs = |p: &PathBuf| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.clone()
            }
        };
        let (cert_path, key_path, ca_path) = (
            abs(&self.cert_file),
            abs(&self.key_file),
            abs(&self.ca_file),
        );
        let cert_pem = read(&cert_path, "cert_file")?;
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls.cert_file {}: {e}", cert_path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "tls.cert_file {}: no certificate found",
                cert_path.display()
            ));
        }
        let key_pem = read(&key_path, "key_file")?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| format!("tls.key_file {}: {e}", key_path.display()))?
            .ok_or_else(|| format!("tls.key_file {}: no private key found", key_path.display()))?;
        let ca_pem = read(&ca_path, "ca_file")?;
        let cas = rustls_pemfile::certs(&mut ca_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls.ca_file {}: {e}", ca_path.display()))?;
        if cas.is_empty() {
            return Err(format!(
                "tls.ca_file {}: no certificate found",
                ca_path.display()
            ));
        }
        // An explicit provider: never depend on which crypto backend another crate
        // in the build happened to enable as the process default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("tls: certificate and key do not fit together: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            ca_pem,
        })
    }
}
