"""Task -> adapter mapping: successive halving against exhaustive scoring, ties, the manifest."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lorauter_integrations.data import Example, TaskSet
from lorauter_integrations.lab.mapping import (
    AdapterScorer,
    HalvingConfig,
    map_adapters,
    successive_halving,
    write_mapping,
)
from lorauter_integrations.adapters.pool import AdapterPool

EXHAUSTIVE = HalvingConfig(start_examples=10_000, max_examples=None)


def _table_scores(table: dict[str, list[float]]):
    calls: list[tuple[str, int]] = []

    def score(name, idx):
        calls.extend((name, i) for i in idx)
        return [table[name][i] for i in idx]

    return score, calls


def test_halving_picks_the_exhaustive_winner_with_fewer_evaluations():
    rng = random.Random(0)
    # 64 candidates: the mean rises with the index, plus per-example noise smaller than the gaps
    # between the top candidates' means.
    table = {f"a{i:02d}": [i / 10 + rng.uniform(-0.3, 0.3) for _ in range(16)] for i in range(64)}
    score, calls = _table_scores(table)
    halving = successive_halving(list(table), 16, score, HalvingConfig(start_examples=2, max_examples=None))
    exhaustive = successive_halving(list(table), 16, _table_scores(table)[0], EXHAUSTIVE)
    assert halving.winner == exhaustive.winner == "a63"
    assert halving.evaluations == len(set(calls)) < exhaustive.evaluations == 64 * 16
    assert [c for c, _ in halving.rounds] == [64, 32, 16, 8]


def test_the_preferred_adapter_wins_a_tie_whatever_its_position():
    table = {"zeta": [1.0, 2.0], "alpha": [1.5, 1.5], "mid": [0.0, 0.0]}
    for preferred in ("zeta", "alpha"):
        result = successive_halving(["alpha", "zeta", "mid"], 2, _table_scores(table)[0], EXHAUSTIVE,
                                    preferred=preferred)
        assert result.winner == preferred
    # Without a preference the tie is broken by id, deterministically.
    assert successive_halving(["zeta", "alpha"], 2, _table_scores(table)[0], EXHAUSTIVE).winner == "alpha"


def test_halving_never_scores_a_pair_twice():
    table = {f"c{i}": [float(i)] * 8 for i in range(10)}
    score, calls = _table_scores(table)
    successive_halving(list(table), 8, score, HalvingConfig(start_examples=1, max_examples=None))
    assert len(calls) == len(set(calls))


PROMPTS = ["Translate to French: the cat", "Is this review positive?", "Answer the question: capital",
           "Summarize: the committee met", "Premise: a man plays guitar", "what is the capital of France",
           "the film was a joy", "agreed on the budget"]
ANSWERS = ["le chat", "yes", "Paris", "they met", "yes", "Paris", "positive", "budget agreed"]


def _task(name: str) -> TaskSet:
    return TaskSet(task=name, examples=[Example(task=name, inputs=p, targets=a) for p, a in zip(PROMPTS, ANSWERS)])


@pytest.fixture
def pool_with_learned(tmp_path, make_adapter, tiny_loaded):
    """Six random adapters plus "learned", trained on the answers of `_task` (so it fits them best),
    and "zz_twin", a byte-identical copy of "learned" that declares it was trained on "own_task"."""
    import shutil

    from lorauter_integrations.lab.training import LoraTrainingConfig, train_adapter

    root = tmp_path / "pool"
    for i, name in enumerate("abcdef"):
        make_adapter(name, r=4, seed=10 + i, root=root)
    config = LoraTrainingConfig(r=4, epochs=6, batch_size=4, learning_rate=1e-2, max_length=64)
    train_adapter(tiny_loaded, _task("any"), root / "learned", config, progress=False)
    shutil.copytree(root / "learned", root / "zz_twin")
    entries = [{"id": n, "path": n, "tasks": [f"task_{n}"], "trained_on": [f"task_{n}"]} for n in "abcdef"]
    entries += [{"id": "learned", "path": "learned", "tasks": []},
                {"id": "zz_twin", "path": "zz_twin", "tasks": ["own_task"], "trained_on": ["own_task"]}]
    (root / "adapters.json").write_text(json.dumps({"base_model": "tiny-random-llama", "adapters": entries}))
    return root


def test_halving_on_a_real_model_finds_the_exhaustive_winner(tiny_loaded, pool_with_learned):
    pool = AdapterPool.from_dir(pool_with_learned)
    scorer = AdapterScorer(tiny_loaded, pool, HalvingConfig(batch_size=3))
    encoded = scorer.encode(_task("t").examples)

    def score(a, idx):
        return scorer.score(a, [encoded[i] for i in idx])

    exhaustive = successive_halving(pool.ids, len(encoded), score, EXHAUSTIVE)
    halving = successive_halving(pool.ids, len(encoded), score, HalvingConfig(start_examples=1, max_examples=None))
    assert exhaustive.winner == halving.winner == "learned"  # the twin ties; the smaller id wins
    assert halving.evaluations < exhaustive.evaluations == 8 * 8


def test_scoring_leaves_the_base_weights_bit_identical(tiny_loaded, pool_with_learned):
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    scorer = AdapterScorer(tiny_loaded, AdapterPool.from_dir(pool_with_learned))
    encoded = scorer.encode(_task("t").examples[:1])
    scores = {a: scorer.score(a, encoded)[0] for a in "abc"}
    assert len(set(scores.values())) == 3  # each adapter really changed the model
    after = tiny_loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_map_adapters_gives_ties_to_the_own_adapter_and_lists_each_task_once(tiny_loaded, pool_with_learned):
    result = map_adapters([_task("own_task"), _task("new_task")], pool_with_learned, base_model=tiny_loaded,
                          progress=False)
    # Same data, same scores: the task trained on zz_twin keeps it; the unowned task gets the
    # smaller id of the tied pair.
    assert result.mapping == {"own_task": "zz_twin", "new_task": "learned"}
    assert result.evaluations < result.exhaustive_evaluations
    manifest = json.loads((pool_with_learned / "adapters.json").read_text())
    listed = [t for entry in manifest["adapters"] for t in entry["tasks"]]
    assert sorted(listed) == sorted(["own_task", "new_task"] + [f"task_{n}" for n in "abcdef"])
    assert AdapterPool.from_dir(pool_with_learned).task_to_adapter["new_task"] == "learned"


@pytest.fixture
def pool_of_six(tmp_path, make_adapter):
    root = tmp_path / "pool6"
    for i, name in enumerate("abcdef"):
        make_adapter(name, r=4, seed=10 + i, root=root)
    manifest = {"base_model": "tiny-random-llama",
                "adapters": [{"id": n, "path": n, "tasks": [f"task_{n}"], "trained_on": [f"task_{n}"]}
                             for n in "abcdef"]}
    (root / "adapters.json").write_text(json.dumps(manifest))
    return root


def test_write_mapping_moves_a_task_to_its_new_adapter(pool_of_six):
    write_mapping(pool_of_six, {"task_a": "c"})
    pool = AdapterPool.from_dir(pool_of_six)
    assert pool.task_to_adapter["task_a"] == "c"
    assert "task_a" not in pool.record("a").tasks
