"""Base-model compatibility by architecture, not by folder name (issue 14): an adapter trained on a
copy of the model in another folder fits; another architecture is refused naming the adapter; an
explicit opt-out; one incompatible adapter can be skipped instead of failing the whole pool."""

from __future__ import annotations

import json

import pytest

from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.errors import IncompatibleAdapterError

from tiny_model import TINY_BASE_ID, make_tiny_model


def _model_copy(tmp_path, tiny_tokenizer, name: str, **config_changes):
    """A local folder holding the tiny model's config.json (as a saved copy of the model would)."""
    config = make_tiny_model(len(tiny_tokenizer)).config.to_dict()
    config.update(config_changes)
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _pool(root, entries, **kwargs):
    (root / "adapters.json").write_text(json.dumps({"adapters": [
        {"id": i, "path": i, "tasks": [f"task_{i}"]} for i in entries]}))
    return AdapterPool.from_dir(root, **kwargs)


def test_an_adapter_trained_on_a_copy_of_the_model_in_another_folder_fits(tmp_path, tiny_loaded, tiny_tokenizer,
                                                                           make_adapter):
    copy = _model_copy(tmp_path, tiny_tokenizer, "my-finetuning-run-3")
    root = tmp_path / "pool"
    make_adapter("a", base_model=str(copy), root=root)
    pool = _pool(root, ["a"]).bind(tiny_loaded.model, TINY_BASE_ID)
    assert pool.ids == ["a"]


def test_another_architecture_is_refused_naming_the_adapter(tmp_path, tiny_loaded, tiny_tokenizer, make_adapter):
    other = _model_copy(tmp_path, tiny_tokenizer, "bigger", num_hidden_layers=4)
    root = tmp_path / "pool"
    make_adapter("a", base_model=str(other), root=root)
    with pytest.raises(IncompatibleAdapterError, match="adapter 'a'.*architecture"):
        _pool(root, ["a"]).bind(tiny_loaded.model, TINY_BASE_ID)


def test_an_unknown_base_name_is_refused_with_the_opt_out_named_and_the_opt_out_works(tmp_path, tiny_loaded,
                                                                                       make_adapter):
    root = tmp_path / "pool"
    make_adapter("a", base_model="someone/renamed-llama", root=root)
    with pytest.raises(IncompatibleAdapterError, match="adapter 'a'.*check_base_model=False"):
        _pool(root, ["a"]).bind(tiny_loaded.model, TINY_BASE_ID)
    assert _pool(root, ["a"], check_base_model=False).bind(tiny_loaded.model, TINY_BASE_ID).ids == ["a"]


def test_one_incompatible_adapter_is_skipped_and_reported_not_fatal(tmp_path, tiny_loaded, make_adapter):
    from lorauter_integrations.engine import RoutedModel

    root = tmp_path / "pool"
    make_adapter("good", root=root)
    make_adapter("wrong_size", root=root, hidden_size=48)
    with pytest.raises(IncompatibleAdapterError, match="wrong_size"):
        RoutedModel(tiny_loaded, pool=_pool(root, ["good", "wrong_size"]))
    pool = _pool(root, ["good", "wrong_size"], on_incompatible="skip")
    with pytest.warns(UserWarning, match="wrong_size"):
        engine = RoutedModel(tiny_loaded, pool=pool)
    assert engine.pool.ids == ["good"] and set(engine.pool.skipped) == {"wrong_size"}
    assert engine.pool.task_to_adapter == {"task_good": "good"}
    out = engine.generate(["hello"], [engine.route_from_override(["good"])], max_new_tokens=2)[0]
    assert out.route.adapters == ["good"]


def test_a_user_pool_folder_layers_over_a_pool_and_stays_confined(tmp_path, tiny_loaded, make_adapter):
    from lorauter_integrations.engine import RoutedModel
    from lorauter_integrations.errors import AdapterError

    bundled, mine = tmp_path / "bundled", tmp_path / "mine"
    make_adapter("a", root=bundled)
    make_adapter("mine_x", root=mine)
    make_adapter("elsewhere", root=tmp_path / "elsewhere")
    (mine / "adapters.json").write_text(json.dumps({"adapters": [{"id": "mine_x", "path": "mine_x",
                                                                  "tasks": ["my_task"]}]}))
    engine = RoutedModel(tiny_loaded, pool=_pool(bundled, ["a"]))
    with pytest.raises(AdapterError, match="escapes the pool directory"):
        engine.pool.register("mine_x", mine / "mine_x")  # not layered yet
    engine.pool.add_dir(mine)
    assert engine.pool.ids == ["a", "mine_x"] and engine.pool.task_to_adapter["my_task"] == "mine_x"
    engine.pool.register("again", mine / "mine_x", tasks=["other"])  # inside a layered folder: allowed
    with pytest.raises(AdapterError, match="escapes"):
        engine.pool.register("out", tmp_path / "elsewhere" / "elsewhere")
    out = engine.generate(["hello"], [engine.route_from_override(["mine_x"])], max_new_tokens=2)[0]
    assert out.route.adapters == ["mine_x"]
