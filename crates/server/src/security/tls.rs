//! Optional TLS (rustls, ring provider) for the public API, and mutual TLS between
//! peers, each certificate bound to one node.
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
//! **A node certificate names its node**: a subjectAltName URI
//! `quorate://node/<id>` ([`node_uri`]), exactly one. Being signed by the CA is not
//! enough to speak for a node, so that node 2's key cannot speak for node 1:
//! - a node dialing peer N checks, besides the usual chain and address checks, that
//!   the server certificate names N ([`Tls::peer_client_config`]);
//! - a node accepting a peer request requires the client certificate to name one
//!   node, and a Raft RPC's sender (the leader or candidate id in its vote) to be that
//!   node (`http::peer`); anything else is refused and counted.
//!
//! `cert_file` and `key_file` may contain `{id}`, replaced by the node's id, so that
//! one `cluster.toml` serves every node (`tls/node-{id}.pem`).
//!
//! So the node certificate must be valid for both `serverAuth` and `clientAuth` and
//! name its node (`scripts/make_test_ca.sh` makes such a CA and certificates);
//! [`TlsSection::load`] checks its own certificate against the client verifier and
//! its node name at startup, so a certificate peers would refuse (or one without the
//! name, as issued before this rule) stops the node with a message instead of a
//! cluster that never forms. The files are read once, at startup
//! ([`super::Security`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

/// `[tls]` of `cluster.toml` (paths relative to the file; `{id}` in `cert_file` and
/// `key_file` is replaced by the node's id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of this node (its SANs must cover the addresses peers
    /// and clients use, e.g. `IP:127.0.0.1`, and name the node:
    /// `URI:quorate://node/<id>`).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA certificate that signed every node's certificate.
    pub ca_file: PathBuf,
}

/// The subjectAltName URI that binds a certificate to node `id`.
pub fn node_uri(id: u64) -> String {
    format!("{NODE_URI_PREFIX}{id}")
}

const NODE_URI_PREFIX: &str = "quorate://node/";

/// Loaded TLS material.
#[derive(Clone)]
pub struct Tls {
    /// For the public API: server certificate only, no client certificates.
    pub api_acceptor: tokio_rustls::TlsAcceptor,
    /// For the Raft port: requires a client certificate signed by the CA.
    pub peer_acceptor: tokio_rustls::TlsAcceptor,
    /// For the gRPC port (Envoy): server certificate only, ALPN `h2`.
    pub grpc_acceptor: tokio_rustls::TlsAcceptor,
    /// The CA, for clients that only verify servers.
    pub ca_pem: Vec<u8>,
    /// The node this certificate names (the node's own id).
    pub node_id: u64,
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: Arc<rustls::RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
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
fn read_certs(path: &Path, what: &str) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
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
    /// Load certificate, key and CA of node `node_id` (paths relative to `base`,
    /// `{id}` replaced), and check that peers will accept the certificate as this
    /// node's.
    pub fn load(&self, base: &Path, node_id: u64) -> Result<Tls, String> {
        let abs = |p: &PathBuf| {
            let p = PathBuf::from(p.to_string_lossy().replace("{id}", &node_id.to_string()));
            if p.is_relative() {
                base.join(p)
            } else {
                p
            }
        };
        let (cert_path, key_path, ca_path) = (
            abs(&self.cert_file),
            abs(&self.key_file),
            abs(&self.ca_file),
        );
        let (_, certs) = read_certs(&cert_path, "cert_file")?;
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
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("tls.ca_file {}: {e}", ca_path.display()))?;
        // Our peers will run these very checks on our certificate: run them now, so a
        // certificate without clientAuth, from another CA or without this node's name
        // is a startup error rather than a cluster that silently never forms.
        if let Some((leaf, chain)) = certs.split_first() {
            verifier
                .verify_client_cert(leaf, chain, UnixTime::now())
                .map_err(|e| {
                    format!(
                        "tls.cert_file {}: peers would refuse this certificate as a client \
                         certificate ({e}); node certificates must be signed by ca_file and \
                         have extendedKeyUsage serverAuth and clientAuth \
                         (see scripts/make_test_ca.sh)",
                        cert_path.display()
                    )
                })?;
            match node_of(leaf) {
                Ok(id) if id == node_id => {}
                Ok(other) => {
                    return Err(format!(
                        "tls.cert_file {}: this certificate names node {other} \
                         (subjectAltName {}), but this is node {node_id}: each node needs \
                         its own certificate naming it ({})",
                        cert_path.display(),
                        node_uri(other),
                        node_uri(node_id)
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "tls.cert_file {}: {e}; a node certificate must name its node with \
                         exactly one subjectAltName URI {} (peers refuse certificates \
                         without it, so that one node's key cannot speak for another; \
                         scripts/make_test_ca.sh issues such certificates, \
                         docs/upgrading.md says how to re-issue)",
                        cert_path.display(),
                        node_uri(node_id)
                    ))
                }
            }
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
        let tls = Tls {
            api_acceptor,
            peer_acceptor,
            grpc_acceptor,
            ca_pem,
            node_id,
            provider,
            roots,
            certs,
            key: Arc::new(key),
        };
        // Fails only if the key does not fit the certificate, already checked above.
        tls.peer_client_config(node_id)?;
        Ok(tls)
    }
}

impl Tls {
    /// The client TLS configuration for calling peer `peer`: trusts only the cluster
    /// CA, presents this node's certificate, and accepts the server only if its
    /// certificate (besides the usual chain, validity and address checks) names
    /// `peer`.
    pub fn peer_client_config(&self, peer: u64) -> Result<rustls::ClientConfig, String> {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| format!("tls.ca_file: {e}"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeBoundVerifier { inner, peer }))
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| format!("tls: certificate and key do not fit together: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The server verifier of a connection to peer `peer`: rustls's WebPKI checks, then
/// the certificate must name `peer`.
#[derive(Debug)]
struct NodeBoundVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    peer: u64,
}

impl ServerCertVerifier for NodeBoundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match node_of(end_entity) {
            Ok(id) if id == self.peer => Ok(verified),
            Ok(id) => Err(rustls::Error::General(format!(
                "peer {} presented the certificate of node {id}",
                self.peer
            ))),
            Err(e) => Err(rustls::Error::General(format!(
                "peer {} presented a certificate that names no node: {e}",
                self.peer
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The node a (DER) certificate names: its one subjectAltName URI
/// `quorate://node/<id>`. An error if it names none, several, or cannot be read.
pub fn node_of(cert: &[u8]) -> Result<u64, String> {
    let uris = san_uris(cert).ok_or("the certificate cannot be parsed")?;
    let mut ids = uris.iter().filter_map(|u| {
        let digits = std::str::from_utf8(u).ok()?.strip_prefix(NODE_URI_PREFIX)?;
        // Canonical decimal only: `01` and `+1` would be a second spelling of node 1.
        let id = digits.parse::<u64>().ok()?;
        (id.to_string() == digits).then_some(id)
    });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id),
        (None, _) => Err(format!(
            "the certificate has no subjectAltName URI {NODE_URI_PREFIX}<id>"
        )),
        (Some(a), Some(b)) => Err(format!(
            "the certificate names several nodes ({a}, {b}, ...); it must name exactly one"
        )),
    }
}

/// One DER element: tag, contents, and what follows it. Single-byte tags and
/// definite lengths only (all a certificate uses); `None` on anything else.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The URIs in a certificate's subjectAltName extension (empty if it has none).
fn san_uris(cert: &[u8]) -> Option<Vec<&[u8]>> {
    const SEQUENCE: u8 = 0x30;
    const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT in TBSCertificate
    const OID: u8 = 0x06;
    const OCTETS: u8 = 0x04;
    const URI: u8 = 0x86; // [6] IMPLICIT IA5String in GeneralName
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17

    let (SEQUENCE, certificate, _) = der_next(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der_next(certificate)? else {
        return None;
    };
    let mut uris = Vec::new();
    while !tbs.is_empty() {
        let (tag, body, rest) = der_next(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (SEQUENCE, mut exts, _) = der_next(body)? else {
            return None;
        };
        while !exts.is_empty() {
            let (SEQUENCE, ext, rest) = der_next(exts)? else {
                return None;
            };
            exts = rest;
            let (OID, oid, mut ext) = der_next(ext)? else {
                return None;
            };
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            // Optional `critical BOOLEAN`, then the OCTET STRING holding GeneralNames.
            let value = loop {
                let (tag, v, rest) = der_next(ext)?;
                if tag == OCTETS {
                    break v;
                }
                ext = rest;
            };
            let (SEQUENCE, mut names, _) = der_next(value)? else {
                return None;
            };
            while !names.is_empty() {
                let (tag, name, rest) = der_next(names)?;
                names = rest;
                if tag == URI {
                    uris.push(name);
                }
            }
        }
    }
    Some(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate from openssl with the given SAN; `None` when openssl
    /// is missing (the multi-node TLS tests need it anyway).
    fn cert_with_san(san: &str) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().ok()?;
        let out = dir.path().join("c.der");
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:P-256")
            .args(["-nodes", "-days", "1", "-subj", "/CN=t", "-outform", "DER"])
            .arg("-keyout")
            .arg(dir.path().join("k.pem"))
            .arg("-out")
            .arg(&out)
            .args(["-addext", &format!("subjectAltName={san}")])
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| std::fs::read(out).ok()).flatten()
    }

    #[test]
    fn a_certificate_names_its_one_node() {
        let Some(c) = cert_with_san("IP:127.0.0.1,URI:quorate://node/7,DNS:localhost") else {
            eprintln!("openssl not found: skipped");
            return;
        };
        assert_eq!(node_of(&c), Ok(7));
        assert_eq!(node_uri(7), "quorate://node/7");

        let c = cert_with_san("IP:127.0.0.1,DNS:node-7.quorate").expect("openssl");
        assert!(node_of(&c).unwrap_err().contains("no subjectAltName URI"));
        let c = cert_with_san("URI:quorate://node/1,URI:quorate://node/2").expect("openssl");
        assert!(node_of(&c).unwrap_err().contains("several nodes"));
        // Non-canonical spellings and other URIs name nothing.
        let c = cert_with_san("URI:quorate://node/01,URI:quorate://node/x,URI:https://a/")
            .expect("openssl");
        assert!(node_of(&c).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(node_of(&[]).is_err());
        assert!(node_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(node_of(&[0x30, 0x03, 0x30, 0x01]).is_err());
        let Some(c) = cert_with_san("URI:quorate://node/3") else {
            return;
        };
        for cut in 0..c.len() {
            let _ = node_of(&c[..cut]);
        }
        let mut flipped = c.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x5a;
            let _ = node_of(&flipped);
            flipped[i] ^= 0x5a;
        }
    }
}
