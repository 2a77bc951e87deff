#!/usr/bin/env bash
# Python package checks and tests (python/): lint, format, types, then pytest against
# real three-node quorate clusters started from the workspace's binary.
#
#   scripts/test_python.sh                 # everything
#   scripts/test_python.sh -k starlette    # extra arguments go to pytest
#
# The virtualenv lives in target/python-venv (git-ignored) and is reused between runs.
# The quorate binary is $QUORATE_BIN, else target/debug/quorate, else
# target/release/quorate, else it is built with `cargo build --bin quorate`: the tests
# never skip for want of a server.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=$ROOT/target/python-venv

echo "== quorate binary"
if [ -n "${QUORATE_BIN:-}" ]; then
  [ -x "$QUORATE_BIN" ] || { echo "QUORATE_BIN=$QUORATE_BIN is not an executable file" >&2; exit 1; }
elif [ -x "$TARGET/debug/quorate" ]; then
  QUORATE_BIN=$TARGET/debug/quorate
elif [ -x "$TARGET/release/quorate" ]; then
  QUORATE_BIN=$TARGET/release/quorate
else
  echo "no quorate binary under $TARGET; building it"
  cargo build --locked --bin quorate
  QUORATE_BIN=$TARGET/debug/quorate
fi
[ -x "$QUORATE_BIN" ] || { echo "quorate binary missing after build: $QUORATE_BIN" >&2; exit 1; }
export QUORATE_BIN
echo "$QUORATE_BIN"

echo "== virtualenv ($VENV)"
# A venv copied or moved from another path has launchers pointing at the old one:
# rebuild it unless its own interpreter runs.
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "./python[test,limits]"

cd python
echo "== ruff check"
"$VENV/bin/python" -m ruff check .
echo "== ruff format --check"
"$VENV/bin/python" -m ruff format --check .
echo "== mypy (strict) src"
"$VENV/bin/python" -m mypy src

echo "== pytest"
# One process, no parallelism: the tests start real clusters and app workers on a
# small machine; the session shares one healthy cluster and one for fault tests.
# Modules, not launcher scripts: launchers hard-code the venv's path.
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
