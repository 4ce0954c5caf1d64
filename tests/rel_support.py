"""Helpers shared by the reliability tests: a `chroma run` server process, the CLI, JSONL files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

#: two tasks per domain for four domains: indexes in about a second
SLICE = ["sst2", "yelp_polarity_reviews", "rte", "snli", "wmt16_translate_deen", "wmt14_enfr",
         "arc_easy", "trivia_qa"]
SERVER_START_TIMEOUT_S = 60.0
LORAUTER_CLI = [sys.executable, "-m", "lorauter_integrations.cli"]


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ChromaServer:
    """A running ``chroma run`` process."""

    host: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, timeout_s: float = 10.0):
        from lorauter_integrations.store import make_client

        return make_client(host=self.host, port=self.port, timeout_s=timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_chroma_server(data_dir: Path, log: Path, timeout_s: float = SERVER_START_TIMEOUT_S) -> ChromaServer:
    """Start ``chroma run`` on 127.0.0.1 and a free port; wait (bounded) for its heartbeat."""
    import chromadb
    from chromadb.config import Settings

    exe = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if exe is None:
        pytest.fail("the `chroma` command is not installed next to this Python (pip install chromadb)")
    port = free_port()
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "run", "--path", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ChromaServer("127.0.0.1", port, proc, log)
    settings = Settings(anonymized_telemetry=False, chroma_server_http_timeout=2.0)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`chroma run` exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            chromadb.HttpClient(host="127.0.0.1", port=port, settings=settings).heartbeat()
            return server
        except Exception as exc:  # not listening yet
            last = exc
            time.sleep(0.2)
    server.stop()
    pytest.fail(f"`chroma run` did not answer a heartbeat within {timeout_s:.0f} s ({last})")


def cli_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "LORAUTER_CACHE": str(cache)}


def run_cli(*args: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``lorauter ARGS`` in a fresh process (as a user would), capturing its output."""
    return subprocess.run([*LORAUTER_CLI, *args], capture_output=True, text=True, env=cli_env(cache), timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess, message: str) -> None:
    """The CLI contract for user mistakes: non-zero exit, one ``error:`` line, no traceback."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert message in errors[0], done.stderr


def write_jsonl(path: Path, tasks) -> Path:
    """Write `TaskSet`s as a validation JSONL file (one example per line)."""
    path.write_text("".join(e.model_dump_json() + "\n" for t in tasks for e in t.examples), encoding="utf-8")
    return path


def run_threads(targets, timeout_s: float = 600) -> None:
    """Start one thread per target, join them all (bounded), fail if any is still blocked."""
    import threading

    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
    assert not any(t.is_alive() for t in threads), "a request is still blocked: deadlock"


def snapshot(engine) -> dict:
    """A copy of the engine model's weights."""
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


def assert_clean(engine, before: dict) -> None:
    """Base weights bit-identical, no hook of ours left, the decode loop idle, the model handed over at once."""
    import torch

    assert engine.loop.wait_idle(60)  # the decode loop has nothing left and restored the model
    after = engine.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks for m in engine.model.modules()) and not engine.composer.active
    with engine.activate(None):
        pass
