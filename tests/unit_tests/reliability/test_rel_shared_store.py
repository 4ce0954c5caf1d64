"""A store's cached view follows writes made through another `TaskStore` on the same collections.

(Across processes on a real server: tests/reliability/test_rel_chroma_server.py.)
"""

from __future__ import annotations

from lorauter_integrations.routing import build_router
from lorauter_integrations.store import TaskStore

QUERY = "Translate to English: Ich habe heute keine Zeit."


def test_a_reader_sees_tasks_written_elsewhere_without_an_explicit_refresh(tmp_path, slice_tasks):
    writer = TaskStore(tmp_path / "s")
    writer.index(slice_tasks[:4], progress=False)
    reader = TaskStore(tmp_path / "s", refresh_s=0.0)
    frozen = TaskStore(tmp_path / "s", refresh_s=None)  # opts out: only refresh() updates it
    routers = {s: build_router(s, reader) for s in ("lorauter", "lorauter-paper", "examples")}
    assert len(reader) == len(frozen) == 4

    new = next(t for t in slice_tasks if t.task == "wmt16_translate_deen")
    writer.index([new], progress=False)
    assert new.task in reader and new.task not in frozen
    for strategy, router in routers.items():  # routers built before the write route to it
        assert router.route(QUERY).tasks[0] == new.task, strategy
    frozen.refresh()
    assert new.task in frozen

    writer.remove(new.task)
    assert new.task not in reader
    assert all(new.task not in router.route(QUERY).tasks for router in routers.values())
