#!/usr/bin/env bash
# Make a throwaway CA and one certificate per node for loopback nodes, for local TLS testing:
#   NODES="1 2 3" scripts/make_test_ca.sh [DIR] [EXTRA_SAN...]     (default DIR: ./tls)
# Writes DIR/ca.pem, DIR/ca.key, and DIR/node-<id>.pem, DIR/node-<id>.key for each id in
# NODES (default "1 2 3"). Each node certificate names its node with the subjectAltName
# URI quorate://node/<id> (peers refuse a certificate that does not name the node it
# speaks for), covers IP:127.0.0.1, IP:::1 and DNS:localhost (plus any EXTRA_SAN, e.g.
# DNS:q1), and is valid for serverAuth (the API and Raft listeners) and clientAuth (a
# node presents it to its peers: the Raft port requires a client certificate signed by
# the CA). The CA must sign node certificates only.
# Then add to cluster.toml ({id} is replaced by each node's id):
#   [tls]
#   cert_file = "tls/node-{id}.pem"
#   key_file = "tls/node-{id}.key"
#   ca_file = "tls/ca.pem"
# and call the API with https and the CA: curl --cacert tls/ca.pem https://127.0.0.1:7101/healthz
set -euo pipefail
dir=${1:-tls}
shift || true
nodes=${NODES:-1 2 3}
mkdir -p "$dir"
san="IP:127.0.0.1,IP:::1,DNS:localhost"
for extra in "$@"; do san="$san,$extra"; done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=quorate test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
for id in $nodes; do
  case $id in (*[!0-9]*|'') echo "NODES: not a node id: $id" >&2; exit 2;; esac
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=quorate node $id" -keyout "$dir/node-$id.key" -out "$dir/node-$id.csr" 2>/dev/null
  openssl x509 -req -in "$dir/node-$id.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 30 -out "$dir/node-$id.pem" \
    -extfile <(printf "subjectAltName=URI:quorate://node/%s,%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n" "$id" "$san") 2>/dev/null
  rm -f "$dir/node-$id.csr"
done
rm -f "$dir/ca.srl"
echo "wrote $dir/ca.pem and node-<id>.pem/.key for nodes: $nodes (SAN: URI:quorate://node/<id>,$san)"
