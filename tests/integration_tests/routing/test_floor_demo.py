"""The demo (Flan) store's similarity floor, calibrated on its own validation examples, is the one
``scripts/floor_study.py`` chose (0.21), and the demo store carries it (also a cached store made
before floors were recorded)."""

from __future__ import annotations

import shutil

import pytest

from lorauter_integrations.demo import demo_pool, demo_store, demo_store_dir
from lorauter_integrations.routing import LoRAuterRouter
from lorauter_integrations.floor import calibrate_floor
from lorauter_integrations.routing.lorauter import CALIBRATED_FLOOR
from lorauter_integrations.store import LOCK_FILE, TaskStore

AGENT_STEP = ("Thought: I need to find the user's order status. Which tool should I call next? "
              "Available tools: search_orders, get_weather, send_email.")


def test_the_demo_store_calibrates_to_the_floor_studys_value():
    store = demo_store()
    cal = calibrate_floor(store)
    assert (cal.n_examples, cal.n_tasks, cal.folds, cal.keep) == (960, 48, 5, 0.99)
    assert cal.floor == pytest.approx(CALIBRATED_FLOOR, abs=0.0025)
    assert cal.quantiles["p1"] == pytest.approx(0.211, abs=0.002)  # results/floor/floor_study.md
    recorded = store.recorded_floor("hybrid")
    assert recorded is not None and recorded.floor == cal.floor
    router = LoRAuterRouter(store, demo_pool().task_to_adapter)  # floor="auto"
    assert router.floor_in_force() == cal.floor
    assert router.route(AGENT_STEP).fallback_reason == "below_floor"  # 0.19 in the floor study
    assert not router.route("Translate to German: the house is red.").fallback


def test_a_cached_demo_store_without_a_floor_gets_one(tmp_path, monkeypatch):
    demo_store().close()  # the canonical store exists
    cache = tmp_path / "cache"
    with TaskStore(demo_store_dir(), lock_wait_s=300):
        shutil.copytree(demo_store_dir(), cache / "stores" / "demo", ignore=shutil.ignore_patterns(LOCK_FILE))
    monkeypatch.setenv("LORAUTER_CACHE", str(cache))
    with TaskStore(cache / "stores" / "demo") as old:
        old._forget_floors()  # as a store cached by an earlier version
        assert old.recorded_floor("hybrid") is None
    store = demo_store()
    assert store.recorded_floor("hybrid").floor == pytest.approx(CALIBRATED_FLOOR, abs=0.0025)
    with TaskStore(cache / "stores" / "demo") as canonical:  # recorded in the canonical store, once
        assert canonical.recorded_floor("hybrid") == store.recorded_floor("hybrid")
