#!/usr/bin/env bash
# The test command of the README: every unit, golden-script, property, storage-
# conformance, crash and multi-process cluster test in the workspace, the Python
# package against a real cluster, and the chaos checker against a planted bug.
set -euo pipefail
cd "$(dirname "$0")/.."
# Integration tests start real 3-node clusters; on 2 cores, running test binaries
# one at a time keeps Raft timers honest.
cargo test --workspace --locked -- --test-threads=2 "$@"
if [ "$#" -gt 0 ]; then
  exit 0 # a filtered run (scripts/test.sh NAME) stops here
fi
# The Python package (python/) against a real three-node cluster of this binary.
if [ -f scripts/test_python.sh ]; then
  bash scripts/test_python.sh
fi
# The chaos checker must catch a deliberately planted bug, and acknowledged writes
# must survive a whole-cluster power loss on the simulated disk. Both are compiled
# only with these test features, so this rebuilds the binary once with both (last,
# for that reason).
cargo test --locked --features planted-bugs,fault-injection --test chaos -- --test-threads=2 planted_bug_is_caught
cargo test --locked --features planted-bugs,fault-injection --test power_outage
