"""What every engine benchmark sets up before it imports vLLM: the repository on ``sys.path``
and quiet, offline defaults (no progress bars, no vLLM logging setup, no tokenizer threads
fighting the engine's, no hub calls).  Import it first; it only sets what is not set."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENV_DEFAULTS = {
    "MMPR_NO_PROGRESS": "1",
    "VLLM_CONFIGURE_LOGGING": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
for _key, _value in ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
