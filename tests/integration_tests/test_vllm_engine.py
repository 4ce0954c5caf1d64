"""`VLLMEngine` against a real vLLM server (CPU) serving the demo model: no mocks.

The server comes from ``make vllm-start`` (installs ``.venv-vllm`` on first use, ~3 min; ready in
~2 min; ~5 GB RAM), or from ``LORAUTER_VLLM_URL`` when set. A server this session started is
stopped at its end; one that was already running is left running.

    .venv/bin/python -m pytest -q -m vllm tests/integration_tests/test_vllm_engine.py -s
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "scripts" / "vllm_server.py"
PYTHON = "python3"


@pytest.fixture(scope="session")
def vllm_url():
    url = os.environ.get("LORAUTER_VLLM_URL")
    if url:
        yield url.rstrip("/")
        return
    running = subprocess.run([PYTHON, str(SERVER), "status"], cwd=ROOT, capture_output=True, text=True,
                             check=False)
    started_here = running.returncode != 0
    out = subprocess.run(["make", "--no-print-directory", "vllm-start"], cwd=ROOT, capture_output=True,
                         text=True, timeout=1800, env=dict(os.environ, HF_HUB_OFFLINE="1"), check=False)
    if out.returncode != 0:
        pytest.fail(f"make vllm-start failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    url = out.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), out.stdout
    try:
        yield url
    finally:
        if started_here:
            subprocess.run(["make", "--no-print-directory", "vllm-stop"], cwd=ROOT, timeout=180, check=False)


@pytest.fixture(scope="session")
def engine(vllm_url, tmp_path_factory):
    from lorauter_integrations.engine.vllm import VLLMEngine

    eng = VLLMEngine.demo(base_url=vllm_url, adapters_dir=tmp_path_factory.mktemp("vllm_adapters"))
    yield eng
    eng.unload_all()
    eng.close()


@pytest.fixture(scope="session")
def local_engine():
    from lorauter_integrations import RoutedModel

    return RoutedModel.demo()


def _test_queries(task: str, n: int) -> list[str]:
    from lorauter_integrations.data import bundled_data_dir

    out = []
    with open(bundled_data_dir() / "test_dev.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["task"] == task and len(rec["inputs"]) < 1200:
                out.append(rec["inputs"])
                if len(out) == n:
                    break
    assert len(out) == n, task
    return out


# (adapters, weights, task whose test queries are used)
PARITY_ROUTES = [
    (["sst2"], [1.0], "sst2"),
    (["wmt16_translate_deen"], [1.0], "wmt16_translate_deen"),
    (["bool_q"], [1.0], "bool_q"),
    (["copa"], [1.0], "copa"),
    (["sentiment140", "sst2"], [0.3, 0.7], "yelp_polarity_reviews"),
    (["arc_easy", "openbookqa"], [0.5, 0.5], "arc_challenge"),
    (["glue_mrpc", "rte", "snli"], [0.2, 0.5, 0.3], "rte"),
    (["copa", "cosmos_qa", "piqa"], [0.4, 0.35, 0.25], "piqa"),
    ([], [], "common_gen"),
]


def _agreement(tok, a: str, b: str) -> tuple[int, int]:
    """Tokens of the common prefix and the longer output's length (greedy decoding: after the
    first differing token the rest is a different continuation, so it counts as disagreement)."""
    ta, tb = tok(a, add_special_tokens=False)["input_ids"], tok(b, add_special_tokens=False)["input_ids"]
    same = 0
    for x, y in zip(ta, tb):
        if x != y:
            break
        same += 1
    return same, max(len(ta), len(tb), 1)


def test_parity_with_local_engine(engine, local_engine):
    from lorauter_integrations.route import Route

    prompts, routes = [], []
    for adapters, weights, task in PARITY_ROUTES:
        route = (engine.route_from_override(adapters, weights) if adapters
                 else Route(strategy="base", fallback=True))
        for q in _test_queries(task, 2):
            prompts.append(q)
            routes.append(route)
    t0 = time.monotonic()
    remote = engine.generate(prompts, routes, max_new_tokens=24, temperature=0.0)
    t_remote = time.monotonic() - t0
    t0 = time.monotonic()
    local = local_engine.generate(prompts, routes, max_new_tokens=24, temperature=0.0)
    t_local = time.monotonic() - t0
    same = total = exact = 0
    lines = []
    for p, r, g, h in zip(prompts, routes, remote, local):
        s, n = _agreement(engine.tokenizer, g.text, h.text)
        same, total, exact = same + s, total + n, exact + (g.text == h.text)
        lines.append(f"{'+'.join(r.adapters) or 'base':38s} {s:3d}/{n:3d} {g.text[:40]!r} | {h.text[:40]!r}")
        assert g.route == r and g.finish_reason in ("stop", "length")
    print("\n".join(lines))
    print(f"parity: {len(prompts)} prompts over {len(PARITY_ROUTES)} routes, {exact} identical texts, "
          f"token agreement {same}/{total} = {same / total:.3f}; vLLM {t_remote:.1f} s, local {t_local:.1f} s")
    assert len({tuple(r.adapters) for r in routes}) >= 8
    assert same / total >= 0.95


def test_chat_prompts_match_the_local_engine(engine, local_engine):
    """Chats through /v1/chat/completions (system, an assistant prefill) and through the local
    rendering (a tool result) give the local engine's greedy text."""
    route = engine.route_from_override(["sst2", "sentiment140"], [0.6, 0.4])
    chats = [
        [{"role": "system", "content": "Answer with one word."},
         {"role": "user", "content": "Review: a joyless, clumsy film. Positive or negative?"}],
        [{"role": "user", "content": "Translate to English: Das Haus ist klein."},
         {"role": "assistant", "content": "The house"}],
        [{"role": "user", "content": "What is 2 + 2? Use the calculator."},
         {"role": "assistant", "content": '{"name": "calculator", "arguments": {"expr": "2 + 2"}}'},
         {"role": "tool", "content": "4"}],
    ]
    remote = engine.generate(chats, [route] * len(chats), max_new_tokens=16)
    local = local_engine.generate(chats, [route] * len(chats), max_new_tokens=16)
    assert [g.text for g in remote] == [g.text for g in local]
    assert [g.prompt_tokens for g in remote] == [g.prompt_tokens for g in local]


def test_routed_generate_and_usage(engine):
    prompt = "Review: a joyless, clumsy film.\nIs this review positive or negative?"
    [g] = engine.generate([prompt], max_new_tokens=8, temperature=0.0)
    assert "sst2" in g.route.adapters and g.route.strategy == "lorauter"
    assert g.text.strip() and g.prompt_tokens == engine.count_tokens(prompt) and g.completion_tokens >= 1
    [short] = engine.generate([prompt], [engine.route_from_override(["sst2"])], max_new_tokens=1)
    assert short.finish_reason == "length" and short.completion_tokens == 1
    base_route = engine.route("x", strategy="base")
    [free] = engine.generate(["Write a sentence about the sea."], [base_route], max_new_tokens=24)
    words = free.text.split()
    assert len(words) >= 4, free.text
    stop = " " + words[3]
    [stopped] = engine.generate(["Write a sentence about the sea."], [base_route], max_new_tokens=24, stop=[stop])
    assert stopped.finish_reason == "stop" and stopped.text == free.text[:free.text.index(stop)]


def test_stream_joins_generate(engine):
    route = engine.route_from_override(["sst2", "sentiment140"], [0.6, 0.4])
    for prompt in ["Review: the best film of the year.\nIs this review positive or negative?",
                   [{"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": "Translate to English: Das Haus ist klein."}]]:
        [g] = engine.generate([prompt], [route], max_new_tokens=16)
        chunks = list(engine.stream(prompt, route, max_new_tokens=16))
        assert "".join(c.text for c in chunks) == g.text
        assert chunks[-1].finish_reason == g.finish_reason
        assert chunks[-1].completion_tokens == g.completion_tokens and chunks[-1].prompt_tokens == g.prompt_tokens

        async def collect(prompt=prompt):
            return [c async for c in engine.astream(prompt, route, max_new_tokens=16)], \
                await engine.agenerate([prompt], [route], max_new_tokens=16)

        achunks, [ag] = asyncio.run(collect())
        assert "".join(c.text for c in achunks) == g.text == ag.text


def test_one_load_per_composition_and_lru(engine):
    route = engine.route_from_override(["rte", "snli"], [0.55, 0.45])
    name = engine.composition_name(route)
    loads = engine.stats["loads"]
    errors = []

    def call():
        try:
            engine.generate(["Premise: a dog runs. Hypothesis: an animal moves. Entailment?"], [route],
                            max_new_tokens=2)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert engine.stats["loads"] - loads <= 1 and name in engine.loaded
    # More compositions than max_loras: the least recently used idle ones are unloaded.
    for w in (0.1, 0.2, 0.3, 0.4, 0.6):
        engine.generate(["Is this review positive? great"], [engine.route_from_override(["sst2", "copa"], [w, 1 - w])],
                        max_new_tokens=1)
    assert len(engine.loaded) <= engine.max_loras
    served = {m["id"] for m in engine._client.get("/models").json()["data"]}
    assert set(engine.loaded) <= served


def test_reload_when_server_forgot_adapter(engine):
    route = engine.route_from_override(["piqa"])
    engine.generate(["Goal: open a jar. Solution 1 or 2?"], [route], max_new_tokens=2)
    name = engine.composition_name(route)
    assert engine._client.post("/unload_lora_adapter", json={"lora_name": name}).status_code == 200
    reloads = engine.stats["reloads"]
    [g] = engine.generate(["Goal: open a jar. Solution 1 or 2?"], [route], max_new_tokens=2)
    assert g.completion_tokens >= 1 and engine.stats["reloads"] == reloads + 1


def test_unreachable_server_is_a_typed_error_quickly():
    from lorauter_integrations.engine.vllm import VLLMEngine, VLLMUnreachableError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(VLLMUnreachableError, match="make vllm-start"):
        VLLMEngine(f"http://127.0.0.1:{port}/v1", tokenizer=object())
    assert time.monotonic() - t0 < 10


def test_adapter_refused_is_a_typed_error(engine):
    from lorauter_integrations.engine.vllm import AdapterRefusedError

    # Five r=8 adapters mixed exactly: one adapter of rank 40 > the server's --max-lora-rank 32.
    route = engine.route_from_override(["sst2", "copa", "rte", "snli", "piqa"])
    with pytest.raises(AdapterRefusedError, match="max-lora-rank") as info:
        engine.generate(["Is this review positive? great"], [route], max_new_tokens=2)
    assert "rank 40" in str(info.value)
    assert engine.composition_name(route) not in engine.loaded
    # The engine still serves afterwards.
    [g] = engine.generate(["Is this review positive? great"], [engine.route_from_override(["sst2"])], max_new_tokens=2)
    assert g.text


def test_chat_loratuer_on_vllm(engine):
    from lorauter_integrations.langchain import ChatLoRAuter

    llm = ChatLoRAuter(engine=engine, max_tokens=12)
    msg = llm.invoke("Review: a joyless, clumsy film.\nIs this review positive or negative?")
    assert msg.content.strip()
    meta = msg.response_metadata["lorauter"]
    assert "sst2" in meta["adapters"]
    streamed = "".join(c.content for c in llm.stream("Translate to English: Das Haus ist klein."))
    assert streamed.strip()
    batch = llm.batch(["Review: a delight from start to finish.\nIs this review positive or negative?",
                       "Translate to English: Der Hund schläft."])
    assert all(m.content.strip() for m in batch)
    assert batch[0].response_metadata["lorauter"]["adapters"] != batch[1].response_metadata["lorauter"]["adapters"]
    amsg = asyncio.run(llm.ainvoke("Translate to English: Die Katze ist alt.",
                                   config={"metadata": {"lorauter": {"strategy": "base"}}}))
    assert amsg.content.strip() and amsg.response_metadata["lorauter"]["adapters"] == []


def test_llama_index_llm_on_vllm(engine):
    from llama_index.core.llms import ChatMessage

    from lorauter_integrations.llama_index import LoRAuterLLM

    llm = LoRAuterLLM(engine=engine, max_new_tokens=12)
    r = llm.complete("Review: a joyless, clumsy film.\nIs this review positive or negative?")
    assert r.text.strip() and "sst2" in r.additional_kwargs["lorauter"]["adapters"]
    chat = llm.chat([ChatMessage(role="user", content="Translate to English: Das Haus ist klein.")])
    assert chat.message.content.strip()
    assert "".join(c.delta for c in llm.stream_complete("Translate to English: Der Hund schläft.")).strip()
    assert asyncio.run(llm.acomplete("Is this review positive or negative? A delight.")).text.strip()


# ---------------------------------------------------------------------------- the full topology
_APP = r'''
import json, sys
from lorauter_integrations.data import bundled_data_dir, load_tasks
from lorauter_integrations.demo import demo_pool
from lorauter_integrations.engine.models import demo_model_dir
from lorauter_integrations.engine.vllm import VLLMEngine
from lorauter_integrations.store import TaskStore, make_client

url, host, port, name, adapters_dir = sys.argv[1:6]
store = TaskStore(client=make_client(host=host, port=int(port)), name=name)
engine = VLLMEngine(url, pool=demo_pool(), store=store, tokenizer=str(demo_model_dir()), adapters_dir=adapters_dir)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "add":
        tasks = {t.task: t for t in load_tasks(bundled_data_dir() / "validation.jsonl")}
        store.index([tasks[t] for t in cmd["tasks"]], progress=False)
        out = {"ok": True}
    else:
        [g] = engine.generate([cmd["prompt"]], max_new_tokens=12)
        out = {"text": g.text, "tasks": g.route.tasks, "adapters": g.route.adapters}
    print(json.dumps(out), flush=True)
'''


class _App:
    """An application process: its own VLLMEngine on the shared Chroma server and vLLM server."""

    def __init__(self, args: list[str], log: Path) -> None:
        import sys

        self.log = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", _APP, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=dict(os.environ, HF_HUB_OFFLINE="1"))

    def read(self, timeout: float = 300.0) -> dict:
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            raise AssertionError(f"app process gave no answer (exit {self.proc.poll()}); see {self.log.name}")
        return json.loads(box[0])

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.mark.server
def test_topology_chroma_server_vllm_server_two_app_processes(vllm_url, tmp_path):
    """App replicas -> one `chroma run` task store + one vLLM server + a shared adapters folder:
    one replica adds a task, the other (running all along) routes to it and generates."""
    from rel_support import start_chroma_server

    from lorauter_integrations.data import bundled_data_dir, load_tasks
    from lorauter_integrations.store import TaskStore

    server = start_chroma_server(tmp_path / "chroma", tmp_path / "chroma.log")
    apps: list[_App] = []
    try:
        tasks = {t.task: t for t in load_tasks(bundled_data_dir() / "validation.jsonl")}
        initial = ["sst2", "yelp_polarity_reviews", "rte", "snli", "wmt14_enfr", "arc_easy", "trivia_qa"]
        TaskStore(client=server.client(), name="topo").index([tasks[t] for t in initial], progress=False)
        args = [vllm_url, server.host, str(server.port), "topo", str(tmp_path / "adapters")]
        apps = [_App(args, tmp_path / f"app{i}.log") for i in range(2)]
        assert all(app.read()["ready"] for app in apps)
        writer, reader = apps
        query = "Translate to English: Ich habe heute keine Zeit, weil ich arbeiten muss."
        before = reader.ask(op="generate", prompt=query)
        assert "wmt16_translate_deen" not in before["tasks"]
        assert writer.ask(op="add", tasks=["wmt16_translate_deen"])["ok"]
        after = reader.ask(op="generate", prompt=query)
        assert after["tasks"][0] == "wmt16_translate_deen" and "wmt16_translate_deen" in after["adapters"]
        same = writer.ask(op="generate", prompt=query)
        assert same["adapters"] == after["adapters"] and same["text"] == after["text"]
        print(f"topology: before {before['tasks']} -> {before['text']!r}; after {after['tasks']} "
              f"{after['adapters']} -> {after['text']!r}")
    finally:
        for app in apps:
            app.stop()
        server.stop()
