#!/usr/bin/env bash
# Make a throwaway CA and one certificate for loopback nodes, for local TLS testing:
#   scripts/make_test_ca.sh [DIR] [EXTRA_SAN...]     (default DIR: ./tls)
# Writes DIR/ca.pem, DIR/ca.key, DIR/node.pem, DIR/node.key. The node certificate
# covers IP:127.0.0.1, IP:::1 and DNS:localhost (plus any EXTRA_SAN, e.g. DNS:q1), and
# is valid for serverAuth (the API and Raft listeners) and clientAuth (a node presents
# it to its peers: the Raft port requires a client certificate signed by the CA).
# The CA must sign node certificates only: any certificate it signed is a peer.
# Then add to cluster.toml:
#   [tls]
#   cert_file = "tls/node.pem"
#   key_file = "tls/node.key"
#   ca_file = "tls/ca.pem"
# and call the API with https and the CA: curl --cacert tls/ca.pem https://127.0.0.1:7101/healthz
set -euo pipefail
dir=${1:-tls}
shift || true
mkdir -p "$dir"
san="IP:127.0.0.1,IP:::1,DNS:localhost"
for extra in "$@"; do san="$san,$extra"; done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=quorate test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=quorate node" -keyout "$dir/node.key" -out "$dir/node.csr" 2>/dev/null
openssl x509 -req -in "$dir/node.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 30 -out "$dir/node.pem" \
  -extfile <(printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n" "$san") 2>/dev/null
rm -f "$dir/node.csr" "$dir/ca.srl"
echo "wrote $dir/ca.pem $dir/node.pem $dir/node.key (SAN: $san)"
