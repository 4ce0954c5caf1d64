"""`make demo` (the same as `lorauter demo`): route real prompts of several tasks through the local
model and its LoRA pool.

Builds the demo engine (SmolLM2-135M-Instruct, the project's trained Flan adapters, a Chroma task
store of the 48 Flan tasks), then answers one held-out query per task family in ONE batched call
(each row with its own composed adapters) and prints each answer with its route
(`lorauter_integrations.walkthrough.run_demo`).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lorauter_integrations.walkthrough import run_demo  # noqa: E402

if __name__ == "__main__":
    run_demo()
