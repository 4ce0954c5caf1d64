"""The demo engine (SmolLM2-135M-Instruct, the bundled adapters and task store) end to end:
generation, concurrency, the CLI, and running with the network blocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lorauter_integrations.engine import RoutedModel
from rel_support import assert_clean, run_cli, run_threads, snapshot

pytestmark = pytest.mark.slow


def test_demo_engine_generates_with_its_real_pool():
    engine = RoutedModel.demo()
    assert engine.pool.ids and set(engine.pool.task_to_adapter.values()) <= set(engine.pool.ids)
    query = "Review: the plot was dull and the acting wooden. Is this movie review positive or negative?"
    route = engine.route(query)
    assert route.adapters and abs(sum(route.weights) - 1) < 1e-6
    [g] = engine.generate([query], max_new_tokens=8)
    assert g.route.adapters == route.adapters
    assert g.text.strip() and g.completion_tokens <= 8
    chunks = list(engine.stream(query, max_new_tokens=8))
    assert "".join(c.text for c in chunks) == g.text



def test_concurrent_requests_on_the_demo_engine_equal_sequential_runs():
    engine = RoutedModel.demo()
    queries = [
        "Review: the plot was dull and the acting wooden. Is this movie review positive or negative?",
        "Premise: A man plays guitar on stage. Hypothesis: A person makes music. Does the premise entail it?",
        "Translate to German: The weather is nice today.",
        "Sentence 1: The cat sat on the mat. Sentence 2: A cat was sitting on the mat. Do they mean the same thing?",
    ]
    alone = [engine.generate([q], max_new_tokens=8)[0] for q in queries]
    assert len({g.route.key() for g in alone}) > 1  # the requests really take different routes
    before = snapshot(engine)
    got: dict[int, object] = {}
    run_threads([lambda i=i: got.__setitem__(i, engine.generate([queries[i]], max_new_tokens=8)[0])
                  for i in range(len(queries))])
    assert [got[i].text for i in range(len(queries))] == [g.text for g in alone]
    assert [got[i].route.key() for i in range(len(queries))] == [g.route.key() for g in alone]
    assert_clean(engine, before)



_NO_NETWORK_SCRIPT = r"""
import json, socket, sys

attempts = []
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _is_local(sock, address):
    if sock.family == getattr(socket, "AF_UNIX", None):
        return True
    host = address[0] if isinstance(address, tuple) else address
    return host in ("127.0.0.1", "::1", "localhost") or str(host).startswith("127.")


def guarded_connect(self, address):
    if not _is_local(self, address):
        attempts.append(repr(address))
        raise OSError("network access blocked by the test")
    return _connect(self, address)


def guarded_connect_ex(self, address):
    if not _is_local(self, address):
        attempts.append(repr(address))
        return 111
    return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex

from lorauter_integrations.engine import RoutedModel

engine = RoutedModel.demo()
query = "Review: a warm, funny and moving film. Is this movie review positive or negative?"
[g] = engine.generate([query], max_new_tokens=4)
print(json.dumps({"attempts": attempts, "adapters": g.route.adapters, "tokens": g.completion_tokens}))
"""


def test_the_demo_engine_runs_offline_with_non_loopback_sockets_blocked(tmp_path):
    # A fresh process, so that nothing loaded earlier in this session hides a download.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    done = subprocess.run([sys.executable, "-c", _NO_NETWORK_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["adapters"] and 1 <= report["tokens"] <= 4



def test_generate_json_prints_text_and_route(tmp_path):
    from lorauter_integrations.settings import cache_dir

    # the demo engine's model and store live in the shared cache (built once per machine)
    out = run_cli("generate", "Translate to English: Guten Morgen!", "--max-new-tokens", "8", "--json",
              cache=cache_dir())
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["text"].strip()
    assert obj["route"]["strategy"] == "lorauter" and obj["route"]["adapters"]
    assert abs(sum(obj["route"]["weights"]) - 1.0) < 1e-6

