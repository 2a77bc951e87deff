//! Optional TLS (rustls, ring provider) for the public API, and mutual TLS between
//! peers.
//!
//! With a `[tls]` section in `cluster.toml`, every listener of the node speaks TLS with
//! `cert_file`/`key_file`:
//! - the **API listener** with server authentication only: clients trust the CA in
//!   `ca_file` (`--ca-file`) and authenticate with bearer tokens, not certificates;
//! - the **Raft listener** with *mutual* TLS: a caller must present a certificate
//!   signed by `ca_file` (rustls `WebPkiClientVerifier`), or the handshake fails
//!   before any HTTP is read. The node's own client presents `cert_file`/`key_file`
//!   to its peers and trusts only `ca_file` (not the system's roots: peers are ours).
//!
//! So the node certificate must be valid for both `serverAuth` and `clientAuth`
//! (`scripts/make_test_ca.sh` makes such a CA and certificate); [`TlsSection::load`]
//! checks its own certificate against the client verifier at startup, so a
//! certificate peers would refuse stops the node with a message instead of a cluster
//! that never forms. Any certificate `ca_file` signed is a peer: that CA must sign
//! node certificates only. The files are read once, at startup
//! ([`super::Security`]).

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
    /// For the public API: server certificate only, no client certificates.
    pub api_acceptor: tokio_rustls::TlsAcceptor,
    /// For the Raft port: requires a client certificate signed by the CA.
    pub peer_acceptor: tokio_rustls::TlsAcceptor,
    /// For the gRPC port (Envoy): server certificate only, ALPN `h2`.
    pub grpc_acceptor: tokio_rustls::TlsAcceptor,
    /// The CA, for the peer client.
    pub ca_pem: Vec<u8>,
    /// This node's private key and certificate chain in PEM, the peer client's
    /// identity (`reqwest::Identity::from_pem`). Never shown by `Debug`.
    pub identity_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(<acceptors, identity redacted>)")
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("tls.{what}: cannot read {}: {e}", path.display()))
}

/// The PEM file `tls.<what>` at `path`, and the certificates in it (at least one).
fn read_certs(
    path: &Path,
    what: &str,
) -> Result<(Vec<u8>, Vec<rustls::pki_types::CertificateDer<'static>>), String> {
    let pem = read(path, what)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.{what} {}: no certificate found",
            path.display()
        ));
    }
    Ok((pem, certs))
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
        let (cert_pem, certs) = read_certs(&cert_path, "cert_file")?;
        let key_pem = read(&key_path, "key_file")?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| format!("tls.key_file {}: {e}", key_path.display()))?
            .ok_or_else(|| format!("tls.key_file {}: no private key found", key_path.display()))?;
        let (ca_pem, cas) = read_certs(&ca_path, "ca_file")?;
        // An explicit provider: never depend on which crypto backend another crate
        // in the build happened to enable as the process default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| format!("tls.ca_file {}: {e}", ca_path.display()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("tls.ca_file {}: {e}", ca_path.display()))?;
        // Our peers will run this very check on our certificate: run it now, so a
        // certificate without clientAuth (or from another CA) is a startup error
        // rather than a cluster that silently never forms.
        if let Some((leaf, chain)) = certs.split_first() {
            verifier
                .verify_client_cert(leaf, chain, rustls::pki_types::UnixTime::now())
                .map_err(|e| {
                    format!(
                        "tls.cert_file {}: peers would refuse this certificate as a client \
                         certificate ({e}); node certificates must be signed by ca_file and \
                         have extendedKeyUsage serverAuth and clientAuth \
                         (see scripts/make_test_ca.sh)",
                        cert_path.display()
                    )
                })?;
        }
        let server_config =
            |client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
             alpn: &[u8]| {
                let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("tls: {e}"))?;
                let builder = match client_auth {
                    Some(v) => builder.with_client_cert_verifier(v),
                    None => builder.with_no_client_auth(),
                };
                let mut config = builder
                    .with_single_cert(certs.clone(), key.clone_key())
                    .map_err(|e| format!("tls: certificate and key do not fit together: {e}"))?;
                config.alpn_protocols = vec![alpn.to_vec()];
                Ok::<_, String>(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            };
        let api_acceptor = server_config(None, b"http/1.1")?;
        let peer_acceptor = server_config(Some(verifier), b"http/1.1")?;
        let grpc_acceptor = server_config(None, b"h2")?;
        // reqwest's rustls identity reads the key and the chain from one PEM buffer.
        let mut identity_pem = key_pem;
        identity_pem.push(b'\n');
        identity_pem.extend_from_slice(&cert_pem);
        Ok(Tls {
            api_acceptor,
            peer_acceptor,
            grpc_acceptor,
            ca_pem,
            identity_pem,
        })
    }
}
