#!/usr/bin/env bash
# Test-only set-up on top of scripts/setup.sh: moto's S3 server (pinned, into
# .venv); ms-swift, LLaMA-Factory with its older TRL and verl (pinned, each into a
# folder of its own, .venv/{swift,llamafactory,verl}-overlay, that the export tests
# puts first on PYTHONPATH of a subprocess); Debian's headless Chromium for
# the HTML report test and util-linux's `script` (a pseudo-terminal for the
# terminal test).  Idempotent via a stamp, like setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
REQ=requirements/test.lock.txt
OVERLAYS=(swift llamafactory verl)  # requirements/NAME.lock.txt -> $VENV/NAME-overlay

STAMP="$VENV/.setup-test-stamp"
WANT="$(cat "$REQ" requirements/{swift,llamafactory,verl}.lock.txt scripts/setup-test.sh "$VENV/.setup-stamp" 2>/dev/null | sha256sum | cut -c1-16)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "setup-test: installing test packages into $VENV"
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps -r "$REQ"
  "$VENV/bin/python" -c "import moto.server, boto3" \
    || { echo "setup-test: moto does not import; see the pip output above" >&2; exit 1; }
  for name in "${OVERLAYS[@]}"; do
    rm -rf "$VENV/$name-overlay"
    "$VENV/bin/python" -m pip --disable-pip-version-check -q install --no-deps \
      --target "$VENV/$name-overlay" -r "requirements/$name.lock.txt"
    # verl's wheel ships top-level `tests` and `scripts` packages: first on a path, they would
    # shadow the project's own
    if [[ "$name" == verl ]]; then rm -rf "$VENV/$name-overlay/tests" "$VENV/$name-overlay/scripts"; fi
  done
  PYTHONPATH="$VENV/swift-overlay" "$VENV/bin/python" -c "import swift.dataset" \
    || { echo "setup-test: ms-swift does not import; see the pip output above" >&2; exit 1; }
  PYTHONPATH="$VENV/verl-overlay" "$VENV/bin/python" -c "from verl.utils.dataset.rl_dataset import RLHFDataset" \
    || { echo "setup-test: verl does not import; see the pip output above" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi

# apt_install COMMAND PACKAGE WHAT: install Debian's PACKAGE when COMMAND is missing
apt_install() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup-test: installing Debian's $2 ($3)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "$2" >/dev/null
  else
    echo "setup-test: $3 needs $1: run 'sudo apt-get install $2'" >&2
    exit 1
  fi
}
apt_install chromium chromium "headless browser for the HTML report test"
apt_install script bsdutils "pseudo-terminal for the terminal test"
