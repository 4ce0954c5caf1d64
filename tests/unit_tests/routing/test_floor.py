"""The similarity floor calibrated per store: the rule, the score it calibrates (the router's), the
record in the store (invalidated when the tasks change), floor="auto" and the settings that name it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lorauter_integrations.errors import InvalidInputError, StoreError
from lorauter_integrations.routing import LoRAuterRouter, build_router
from lorauter_integrations.floor import (
    FloorCalibration, calibrate_floor, cross_validated_similarities, floor_from_similarities, parse_floor,
    top_similarities,
)
from lorauter_integrations.settings import load_settings
from lorauter_integrations.store import TaskStore

PROMPTS = [
    "Review: a tedious, overlong film. Is this movie review positive or negative?",
    "Translate to German: the weather is nice today.",
    "What is the capital of France?",
]


def _short(tasks, n: int):
    return [t.model_copy(update={"examples": t.examples[:n]}) for t in tasks]


def test_the_floor_rule_is_the_floor_studys():
    # the largest 0.0025-grid value keeping >= keep of the similarities at or above it
    sims = np.linspace(0.2, 0.6, 1000)
    f = floor_from_similarities(sims, 0.99)
    assert np.mean(sims >= f) >= 0.99 and np.mean(sims >= f + 0.0025) < 0.99
    assert f == pytest.approx(0.2025)
    assert floor_from_similarities(sims, 1.0) == 0.2  # every one kept: the grid value at or below the minimum
    assert floor_from_similarities(np.array([-0.5, 0.3]), 1.0) == -0.5  # the grid reaches below 0


def test_calibrating_a_small_store(fresh_store):
    cal = calibrate_floor(fresh_store, "hybrid", keep=0.9, folds=4)
    assert isinstance(cal, FloorCalibration)
    assert (cal.n_examples, cal.n_tasks, cal.folds, cal.keep) == (32, 4, 4, 0.9)
    sims = cross_validated_similarities(fresh_store, "hybrid", 4)
    assert cal.floor == floor_from_similarities(sims, 0.9)
    assert np.mean(sims >= cal.floor) >= 0.9 and cal.routed == pytest.approx(np.mean(sims >= cal.floor), abs=1e-4)
    assert cal.quantiles["p1"] <= cal.quantiles["p50"] <= cal.quantiles["p99"]
    assert cal.tasks_fingerprint == fresh_store.tasks_fingerprint()


def test_the_calibrated_score_is_the_routers_similarity(fresh_store):
    # fitted on every example (as the store is), the calibration's score is the router's top-1 cosine
    texts, dense, tasks, domains = fresh_store.example_rows()
    rep, feats = fresh_store._fit_representation("hybrid", texts, dense, tasks, domains)
    ours = top_similarities(rep, feats, np.asarray(tasks), rep.featurize(PROMPTS, fresh_store.encode(PROMPTS)))
    router = LoRAuterRouter(fresh_store, floor=None)
    theirs = [router.route(p).similarities[0] for p in PROMPTS]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_too_few_examples_per_task_is_refused_and_index_records_no_floor(tmp_path, flan_tasks):
    with TaskStore(tmp_path / "s") as store:
        store.index(_short(flan_tasks[:3], 3), progress=False)
        assert store.recorded_floor("hybrid") is None and store.recorded_floor("paper") is None
        with pytest.raises(InvalidInputError, match="at least 5 indexed examples"):
            calibrate_floor(store)
        assert calibrate_floor(store, folds=3).n_examples == 9  # three folds need three examples
        with pytest.raises(InvalidInputError, match="keep"):
            calibrate_floor(store, keep=1.5)
        # auto: no floor recorded, so none in force
        r = LoRAuterRouter(store)
        assert r.floor == "auto" and r.floor_in_force() is None and not r.route(PROMPTS[0]).fallback


def test_index_records_the_floor_and_changing_the_tasks_recomputes_it(tmp_path, flan_tasks):
    with TaskStore(tmp_path / "s") as store:
        store.index(flan_tasks[:4], progress=False)
        first = {rep: store.recorded_floor(rep) for rep in ("hybrid", "paper")}
        assert all(c is not None and c.n_tasks == 4 and c.n_examples == 32 for c in first.values())
        assert first["hybrid"].floor == calibrate_floor(store).floor
        store.index(flan_tasks[:4], progress=False)  # unchanged: the record stays
        assert store.recorded_floor("hybrid") == first["hybrid"]
        store.index(flan_tasks[:5], progress=False)  # a task added: recalibrated
        added = store.recorded_floor("hybrid")
        assert added.n_tasks == 5 and added.tasks_fingerprint == store.tasks_fingerprint()
        store.remove(flan_tasks[4].task)  # removed: recalibrated on the four again
        assert store.recorded_floor("hybrid").n_tasks == 4
        store.index([_short(flan_tasks[3:4], 2)[0]], progress=False)  # a task cut to 2 examples: no floor
        assert store.recorded_floor("hybrid") is None
    with TaskStore(tmp_path / "s") as store:  # what is recorded persists
        assert store.recorded_floor("hybrid") is None


def test_a_floor_recorded_for_other_tasks_is_not_used(tmp_path, flan_tasks):
    with TaskStore(tmp_path / "s") as store:
        store.index(flan_tasks[:4], progress=False)
        cal = store.recorded_floor("hybrid")
        store.record_floor(cal.model_copy(update={"tasks_fingerprint": "0" * 16}))
        assert store.recorded_floor("hybrid") is None


def test_auto_routes_with_the_recorded_floor(fresh_store):
    cal = fresh_store.recorded_floor("hybrid")
    assert cal is not None
    auto = LoRAuterRouter(fresh_store)  # the default
    assert auto.floor == "auto" and auto.floor_in_force() == cal.floor
    # a floor above every similarity, recorded by hand: every route falls back
    fresh_store.record_floor(cal.model_copy(update={"floor": 0.999}))
    routes = auto.route_many(PROMPTS)
    assert all(r.fallback and r.fallback_reason == "below_floor" and not r.adapters for r in routes)
    assert all(r.similarities[0] < 0.999 for r in routes)
    off = LoRAuterRouter(fresh_store, floor=None)
    assert off.floor_in_force() is None and not off.route(PROMPTS[0]).fallback
    assert not LoRAuterRouter(fresh_store, floor="off").route(PROMPTS[0]).fallback
    assert LoRAuterRouter(fresh_store, floor=-1.0).floor_in_force() == -1.0
    # the paper representation has its own record, untouched
    paper = LoRAuterRouter(fresh_store, representation="paper")
    assert paper.floor_in_force() == fresh_store.recorded_floor("paper").floor < 0.999


def test_a_malformed_recorded_floor_is_a_store_error(fresh_store):
    for doc in ("not json", json.dumps({"floor": "high"}),
                fresh_store.recorded_floor("hybrid").model_copy(update={"representation": "paper"}).model_dump_json()):
        fresh_store._meta.upsert(ids=["floor:hybrid"], embeddings=np.ones((1, 1), dtype=np.float32),
                                 documents=[doc], metadatas=[{"kind": "floor"}])
        fresh_store.refresh()
        with pytest.raises(StoreError, match="recorded similarity floor .* malformed"):
            fresh_store.recorded_floor("hybrid")
        with pytest.raises(StoreError):
            LoRAuterRouter(fresh_store).route(PROMPTS[0])
        assert not LoRAuterRouter(fresh_store, floor=0.0).route(PROMPTS[0]).fallback  # an explicit floor still routes
    with pytest.raises(InvalidInputError):
        fresh_store.record_floor({"floor": 0.2})


@pytest.mark.parametrize("value, parsed", [
    ("auto", "auto"), (" AUTO ", "auto"), ("none", None), ("Off", None), (None, None), ("0.3", 0.3), (0.25, 0.25),
    (1, 1.0), ("-0.1", -0.1),
])
def test_floor_settings_parse(value, parsed):
    assert parse_floor(value) == parsed


@pytest.mark.parametrize("bad", ["abc", "", True, float("nan"), [0.2], "inf"])
def test_a_bad_floor_setting_is_refused(bad):
    with pytest.raises(InvalidInputError):
        parse_floor(bad)


def test_the_settings_loader_takes_auto_off_and_numbers(monkeypatch, tmp_path, shared_store):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LORAUTER_CONFIG", raising=False)
    monkeypatch.delenv("LORAUTER_FLOOR", raising=False)
    assert load_settings().floor is None and "floor" not in load_settings().router_config()  # the router's default
    assert load_settings(floor="auto").router_config()["floor"] == "auto"
    assert load_settings(floor="none").router_config()["floor"] is None
    assert load_settings(floor="0.3").floor == 0.3
    monkeypatch.setenv("LORAUTER_FLOOR", "off")
    assert load_settings().floor == "off" and load_settings().router_config()["floor"] is None
    monkeypatch.setenv("LORAUTER_FLOOR", "high")
    with pytest.raises(InvalidInputError, match="floor"):
        load_settings()
    monkeypatch.delenv("LORAUTER_FLOOR")
    (tmp_path / "lorauter.toml").write_text('floor = "auto"\n')
    assert load_settings().floor == "auto"
    (tmp_path / "lorauter.toml").write_text('floor = "sometimes"\n')
    with pytest.raises(InvalidInputError, match="floor"):
        load_settings()
    # build_router: None is "no floor" (not "the default"), strings are parsed, junk refused
    assert build_router("lorauter", shared_store).floor == "auto"
    assert build_router("lorauter", shared_store, floor=None).floor is None
    assert build_router("lorauter", shared_store, floor="off").floor is None
    assert build_router("lorauter", shared_store, floor="0.2").floor == 0.2
    with pytest.raises(InvalidInputError):
        build_router("retriever", shared_store, floor="junk")  # refused even where no floor applies


def test_the_cli_calibrates_and_records(tmp_path, flan_tasks, monkeypatch):
    from typer.testing import CliRunner

    from lorauter_integrations.cli import app

    monkeypatch.delenv("LORAUTER_CONFIG", raising=False)
    monkeypatch.delenv("LORAUTER_FLOOR", raising=False)
    with TaskStore(tmp_path / "s") as store:
        store.index(flan_tasks[:4], progress=False)
        store._forget_floors()
    runner = CliRunner()
    out = runner.invoke(app, ["calibrate-floor", "--store", str(tmp_path / "s"), "--keep", "0.9", "--json"])
    assert out.exit_code == 0, out.output
    cal = FloorCalibration.model_validate_json(out.stdout)
    assert cal.keep == 0.9 and cal.n_tasks == 4
    with TaskStore(tmp_path / "s") as store:
        assert store.recorded_floor("hybrid") == cal
    routed = runner.invoke(app, ["route", PROMPTS[1], "--store", str(tmp_path / "s"), "--json"])
    assert routed.exit_code == 0, routed.output
    assert json.loads(routed.stdout)["floor"] == cal.floor
    off = runner.invoke(app, ["route", PROMPTS[1], "--store", str(tmp_path / "s"), "--floor", "off", "--json"])
    assert json.loads(off.stdout)["floor"] is None
