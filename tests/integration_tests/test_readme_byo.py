"""README "Your own model, adapters and tasks" runs as written (issue 14).

The user's own artefacts are provided the way a user would have them: two PEFT LoRA folders in
``my_pool/`` (copies of two bundled adapters) and, since tests are offline, the model as a local
folder: the one ``MODEL = ...`` line is pointed at the converted demo model (SmolLM2-135M-Instruct),
every other line runs unchanged, in an empty folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from readme_support import section_code

pytestmark = pytest.mark.slow
SECTION = "Your own model, adapters and tasks"


def test_byo_section_is_short_and_runs_as_written(tmp_path):
    (code,) = section_code(SECTION)
    assert len(code.splitlines()) <= 20
    from lorauter_integrations.demo import DEMO_POOL_DIR
    from lorauter_integrations.engine.models import demo_model_dir

    model_line = re.search(r'^MODEL = "([^"]+)"', code, flags=re.M)
    assert model_line, "the section names its model on one MODEL line"
    local = demo_model_dir()  # a local folder of the same model (its BASE_MODEL_ID names the HF id)
    assert (local / "BASE_MODEL_ID").read_text().strip() == model_line.group(1)
    code = code.replace(model_line.group(0), f'MODEL = "{local}"')
    (tmp_path / "my_pool").mkdir()
    shutil.copytree(DEMO_POOL_DIR / "sst2", tmp_path / "my_pool" / "reviews")
    shutil.copytree(DEMO_POOL_DIR / "wmt16_translate_deen", tmp_path / "my_pool" / "german")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("<- ['reviews']"), proc.stdout
