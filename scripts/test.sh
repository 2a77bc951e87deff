#!/usr/bin/env bash
# The test command of the README: every unit, golden-script, property, storage-
# conformance, crash and multi-process cluster test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# Integration tests start real 3-node clusters; on 2 cores, running test binaries
# one at a time keeps Raft timers honest.
cargo test --workspace --locked -- --test-threads=2 "$@"
