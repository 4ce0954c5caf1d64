"""The task store on a real `chroma run` server (``chromadb.HttpClient``).

Every store operation and every routing strategy works over HTTP exactly as on the embedded
client; two application processes share one store; an unreachable or silent server is a
`StoreError` within the configured timeout, never a hang.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from lorauter_integrations.errors import StoreError
from lorauter_integrations.routing import STRATEGIES, build_router
from lorauter_integrations.store import TaskStore, make_client
from rel_support import assert_one_line_error, free_port, run_cli, start_chroma_server, write_jsonl

pytestmark = pytest.mark.server

QUERIES = [
    "Review: the film was a joyless slog.\nIs this movie review sentence negative or positive?",
    "Translate to English: Das Wetter ist heute schön.",
    "Premise: A man plays guitar. Hypothesis: A person makes music. Does the premise entail the hypothesis?",
    "Which is a renewable source of energy? OPTIONS: - coal - wind - oil",
]


@pytest.fixture(scope="module")
def embedded_store(tmp_path_factory, slice_tasks):
    """The same tasks in an embedded store: the reference the HTTP store must match."""
    store = TaskStore(tmp_path_factory.mktemp("embedded"))
    store.index(slice_tasks, progress=False)
    return store


@pytest.fixture(scope="module")
def served_store(chroma_server, slice_tasks):
    """The eight tasks indexed once on the server (read-only tests share it)."""
    store = TaskStore(client=chroma_server.client(), name="served")
    store.index(slice_tasks, progress=False)
    return store


def test_index_reindex_update_and_remove_work_over_http(chroma_server, store_name, slice_tasks):
    store = TaskStore(client=chroma_server.client(), name=store_name)
    report = store.index(slice_tasks[:4], progress=False)
    assert report.added == [t.task for t in slice_tasks[:4]]
    again = store.index(slice_tasks[:4], progress=False)
    assert again.unchanged == report.added and not again.added and not again.updated

    changed = slice_tasks[0].model_copy(update={"examples": slice_tasks[0].examples[:3]})
    assert store.index([changed], progress=False).updated == [changed.task]
    assert store.task(changed.task).size == 3 and len(store.examples([changed.task])[changed.task]) == 3

    translation = slice_tasks[4]
    store.index([translation], progress=False)
    q = store.featurize("hybrid", ["Translate to English: Ich habe Hunger."])
    assert store.nearest_tasks("hybrid", q, 1)[0][0][0] == translation.task

    store.remove(translation.task)
    assert translation.task not in store and translation.task not in store.examples()
    assert all(t != translation.task for t, _ in store.nearest_tasks("hybrid", q, 10)[0])

    reopened = TaskStore(client=chroma_server.client(), name=store_name)  # a new client sees it all
    assert [r.task for r in reopened.tasks()] == sorted(t.task for t in slice_tasks[:4])


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_routes_over_http_as_on_the_embedded_store(served_store, embedded_store, strategy):
    over_http = build_router(strategy, served_store)
    embedded = build_router(strategy, embedded_store)
    for q in QUERIES:
        got = over_http.route(q, known_task="sst2")
        ref = embedded.route(q, known_task="sst2")
        assert got.tasks == ref.tasks and got.adapters == ref.adapters
        assert got.weights == pytest.approx(ref.weights, abs=1e-5)
        assert all(w >= 0 for w in got.weights)
        assert got.fallback or sum(got.weights) == pytest.approx(1.0)


_ROUTING_PROCESS = textwrap.dedent(r"""
    import json, sys, time
    from lorauter_integrations.routing import build_router
    from lorauter_integrations.store import TaskStore, make_client

    host, port, name, query, wanted = sys.argv[1:6]
    store = TaskStore(client=make_client(host=host, port=int(port)), name=name)
    router = build_router("lorauter", store)
    print(json.dumps({"ready": [r.task for r in store.tasks()]}), flush=True)
    seen, routes, deadline = None, 0, time.monotonic() + 120
    while time.monotonic() < deadline:  # route continuously, never refreshing by hand
        route = router.route(query)
        routes += 1
        assert route.weights and abs(sum(route.weights) - 1) < 1e-6, route
        if wanted in route.tasks[:1] and wanted in store:
            seen = route.tasks
            break
        time.sleep(0.05)
    print(json.dumps({"seen": seen, "routes": routes}), flush=True)
""")


def test_a_task_added_by_one_process_is_routed_by_another_while_it_routes(chroma_server, store_name, slice_tasks):
    query = "Translate to English: Ich habe heute keine Zeit."
    new = next(t for t in slice_tasks if t.task == "wmt16_translate_deen")
    writer = TaskStore(client=chroma_server.client(), name=store_name)
    writer.index([t for t in slice_tasks if not t.task.startswith("wmt")], progress=False)
    reader = subprocess.Popen(
        [sys.executable, "-c", _ROUTING_PROCESS, chroma_server.host, str(chroma_server.port), store_name, query,
         new.task],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(reader.stdout.readline() or "null")
        assert ready is not None, reader.stderr.read()
        assert new.task not in ready["ready"]
        writer.index([new], progress=False)  # while the other process keeps routing
        out, err = reader.communicate(timeout=180)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["seen"] and result["seen"][0] == new.task


def test_a_closed_port_is_a_store_error_within_the_timeout():
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:\d+"):
        make_client(host="127.0.0.1", port=free_port(), timeout_s=2.0)
    assert time.monotonic() - start < 10


def test_a_server_that_accepts_but_never_answers_is_a_store_error_not_a_hang():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
        start = time.monotonic()
        with pytest.raises(StoreError):
            make_client(host="127.0.0.1", port=silent.getsockname()[1], timeout_s=2.0)
        assert time.monotonic() - start < 15


def test_a_server_that_goes_away_turns_store_calls_into_store_errors(tmp_path, slice_tasks):
    server = start_chroma_server(tmp_path / "data", tmp_path / "server.log")
    try:
        store = TaskStore(client=server.client(timeout_s=2.0), name="doomed")
        store.index(slice_tasks[:2], progress=False)
        q = store.featurize("hybrid", [QUERIES[0]])
        assert store.nearest_tasks("hybrid", q, 1)[0]
    finally:
        server.stop()
    start = time.monotonic()
    with pytest.raises(StoreError, match="query task vectors"):
        store.nearest_tasks("hybrid", q, 1)
    with pytest.raises(StoreError):
        store.index(slice_tasks[2:3], progress=False)
    assert time.monotonic() - start < 30


def test_cli_against_an_unreachable_server_is_one_line_error(tmp_path):
    done = run_cli("tasks", "--server", f"127.0.0.1:{free_port()}", cache=tmp_path, timeout=120)
    assert_one_line_error(done, "Chroma")


def test_cli_indexes_and_routes_on_the_server(chroma_server, tmp_path, slice_tasks):
    val = write_jsonl(tmp_path / "val.jsonl", slice_tasks)
    done = run_cli("index", "--validation", str(val), "--server", chroma_server.address, cache=tmp_path)
    assert done.returncode == 0, done.stderr
    out = run_cli("route", QUERIES[1], "--server", chroma_server.address, "--json", cache=tmp_path)
    assert out.returncode == 0, out.stderr
    route = json.loads(out.stdout)
    assert route["tasks"][0].startswith("wmt") and np.isclose(sum(route["weights"]), 1.0)
