"""Loading models is quiet by default: no transformers progress bars unless LORAUTER_VERBOSE=1."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = ("from lorauter_integrations.encoders import DEFAULT_ENCODER, SentenceEncoder; "
          "SentenceEncoder(DEFAULT_ENCODER).encode(['hello'])")


def _stderr(**env: str) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_loading_the_encoder_prints_no_progress_bar_unless_verbose():
    assert "Loading weights" not in _stderr()
    assert "Loading weights" in _stderr(LORAUTER_VERBOSE="1")
