#!/usr/bin/env bash
# Test-only set-up on top of scripts/setup.sh: moto's S3 server (pinned, into
# .venv) and Debian's headless Chromium for the HTML report test.  Idempotent
# via a stamp, like setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
REQ=requirements/test.lock.txt

STAMP="$VENV/.setup-test-stamp"
WANT="$(cat "$REQ" scripts/setup-test.sh "$VENV/.setup-stamp" 2>/dev/null | sha256sum | cut -c1-16)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "setup-test: installing test packages into $VENV"
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps -r "$REQ"
  "$VENV/bin/python" -c "import moto.server, boto3" \
    || { echo "setup-test: moto does not import; see the pip output above" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup-test: installing Debian's chromium (headless browser for the report test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "setup-test: the HTML report test needs chromium: run 'sudo apt-get install chromium'" >&2
    exit 1
  fi
fi
