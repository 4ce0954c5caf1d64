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


def _table_scores(table: dict[str, list]):
    """A lookup of recorded values (scores or answers) per (adapter, example), logging the calls."""
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


# --- the metric criterion: the task's metric on greedy answers decides the final rounds ---------
def _em_of(refs):
    from lorauter_integrations.lab.evaluation.metrics import task_score

    return lambda answers: task_score("em", list(answers), refs[: len(answers)])


def test_the_schedule_and_which_rounds_rank_by_the_metric():
    from lorauter_integrations.lab.mapping import halving_schedule, metric_rounds

    assert halving_schedule(16, 20, HalvingConfig()) == [(16, 2), (8, 4), (4, 8)]
    assert halving_schedule(16, 3, HalvingConfig()) == [(16, 2), (8, 3)]
    assert halving_schedule(1, 20, HalvingConfig()) == [(1, 2)]
    assert metric_rounds(3, HalvingConfig()) == [False, False, False]  # likelihood: never
    assert metric_rounds(3, HalvingConfig(criterion="metric")) == [False, True, True]
    assert metric_rounds(3, HalvingConfig(criterion="metric", metric_from_round=-1)) == [False, False, True]
    assert metric_rounds(3, HalvingConfig(criterion="metric", metric_from_round=0)) == [True, True, True]
    assert metric_rounds(3, HalvingConfig(criterion="metric", metric_from_round=-9)) == [True, True, True]
    assert metric_rounds(3, HalvingConfig(criterion="metric", metric_from_round=7)) == [False, False, False]


# Eight candidates, eight examples. "format" fits the answers' form best (highest likelihood) but
# answers wrongly; "right" is second by likelihood and answers correctly; "buried" answers
# correctly too but has the worst likelihood, so a likelihood round prunes it first.
REFS = ["yes", "no", "yes", "no", "yes", "no", "yes", "no"]
LIKELIHOOD = {"format": [-0.1] * 8, "right": [-0.5] * 8, "buried": [-9.0] * 8,
              **{f"filler{i}": [-1.0 - i / 10] * 8 for i in range(5)}}
ANSWERS_TABLE = {"format": ["maybe"] * 8, "right": list(REFS), "buried": list(REFS),
                 **{f"filler{i}": ["maybe"] * 8 for i in range(5)}}


def test_the_metric_criterion_overrules_the_likelihood_after_likelihood_pruning():
    halving = HalvingConfig(start_examples=2, max_examples=8, criterion="metric")  # rounds 8@2, 4@4, 2@8
    likelihood = successive_halving(list(LIKELIHOOD), 8, _table_scores(LIKELIHOOD)[0], HalvingConfig())
    assert likelihood.winner == "format" and likelihood.generations == 0 and likelihood.metric_score is None

    answer, answered = _table_scores(ANSWERS_TABLE)
    result = successive_halving(list(LIKELIHOOD), 8, _table_scores(LIKELIHOOD)[0], halving,
                                answer=answer, metric=_em_of(REFS))
    assert result.winner == "right" and result.metric_score == 100.0
    assert result.round_criteria == ["likelihood", "metric", "metric"]
    # Round 0 pruned by likelihood: "buried" never generated. Answers are generated once per pair:
    # 4 candidates x 4 examples, then 2 survivors x 4 more examples.
    assert "buried" not in {name for name, _ in answered}
    assert len(answered) == len(set(answered)) == result.generations == 4 * 4 + 2 * 4
    assert [s.adapter for s in result.standings] == ["right", "format"]
    assert result.standings[1].metric == 0.0 and result.standings[1].likelihood == pytest.approx(-0.1)

    # Ranked by the metric from round 0, "buried" survives and ties "right" on EM; "right" has the
    # better likelihood and wins the tie.
    answer, answered = _table_scores(ANSWERS_TABLE)
    early = successive_halving(list(LIKELIHOOD), 8, _table_scores(LIKELIHOOD)[0],
                               halving.model_copy(update={"metric_from_round": 0}), answer=answer,
                               metric=_em_of(REFS))
    assert early.winner == "right" and [s.adapter for s in early.standings] == ["right", "buried"]
    assert early.generations == 8 * 2 + 4 * 2 + 2 * 4


def test_the_metric_criterion_breaks_metric_ties_by_likelihood_then_preference():
    table = {"low": [-2.0] * 4, "high": [-1.0] * 4, "twin": [-1.0] * 4}
    answers = {name: ["wrong"] * 4 for name in table}  # every EM is 0: the metric cannot decide
    config = HalvingConfig(start_examples=4, max_examples=4, criterion="metric", metric_from_round=0)
    result = successive_halving(list(table), 4, _table_scores(table)[0], config,
                                answer=_table_scores(answers)[0], metric=_em_of(["x"] * 4))
    assert result.winner == "high"
    preferred = successive_halving(list(table), 4, _table_scores(table)[0], config, preferred="twin",
                                   answer=_table_scores(answers)[0], metric=_em_of(["x"] * 4))
    assert preferred.winner == "twin"


def test_the_metric_criterion_needs_answers_and_a_metric():
    from lorauter_integrations.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="answer function"):
        successive_halving(["a"], 1, lambda n, idx: [0.0] * len(idx), HalvingConfig(criterion="metric"))


# A real disagreement on the tiny model: "format" is trained on each prompt's right answer once and
# a wrong answer of the same form twice (greedy: the wrong one; the right one keeps a fair
# likelihood); "half" is trained on the right answers briefly (lower likelihood, yet greedy gets
# some right).
WRONG = ["la maison", "no", "London", "they left", "no", "London", "negative", "budget cut"]


@pytest.fixture
def pool_format_vs_half(tmp_path, make_adapter, tiny_loaded):
    from lorauter_integrations.lab.training import LoraTrainingConfig, train_adapter

    root = tmp_path / "pool_fh"
    make_adapter("noise", r=4, seed=1, root=root)
    right = _task("any").examples
    wrong = [Example(task="any", inputs=p, targets=a) for p, a in zip(PROMPTS, WRONG)]
    train_adapter(tiny_loaded, TaskSet(task="any", examples=right + wrong + wrong), root / "format",
                  LoraTrainingConfig(r=4, epochs=30, batch_size=4, learning_rate=2e-2, max_length=64), progress=False)
    train_adapter(tiny_loaded, _task("any"), root / "half",
                  LoraTrainingConfig(r=4, epochs=10, batch_size=4, learning_rate=2e-2, max_length=64), progress=False)
    entries = [{"id": n, "path": n, "tasks": []} for n in ("noise", "format", "half")]
    (root / "adapters.json").write_text(json.dumps({"base_model": "tiny-random-llama", "adapters": entries}))
    return root


def test_map_adapters_by_metric_picks_the_adapter_that_answers_right(tiny_loaded, pool_format_vs_half, monkeypatch):
    from lorauter_integrations.lab.evaluation.metrics import task_score

    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    exhaustive = {"start_examples": 8, "max_examples": 8}
    by_likelihood = map_adapters([_task("t")], pool_format_vs_half, base_model=tiny_loaded, write=False,
                                 progress=False, config=HalvingConfig(**exhaustive))
    generated: list[tuple[str, str]] = []
    real_answers = AdapterScorer.answers

    def recording(self, adapter_id, examples, max_new_tokens=None):
        out = real_answers(self, adapter_id, examples, max_new_tokens)
        generated.extend(zip([adapter_id] * len(out), out))
        return out

    monkeypatch.setattr(AdapterScorer, "answers", recording)
    by_metric = map_adapters([_task("t")], pool_format_vs_half, base_model=tiny_loaded, write=False, progress=False,
                             config=HalvingConfig(**exhaustive, criterion="metric", metric_from_round=0))
    assert by_likelihood.mapping == {"t": "format"}
    assert by_metric.mapping == {"t": "half"}
    [task] = by_metric.tasks
    assert task.metric == "em" and task.generations == by_metric.generations == len(generated) == 3 * 8
    # The reported metric is EM of the winner's greedy answers against the task's references.
    half_answers = [a for name, a in generated if name == "half"]
    assert task.metric_score == task_score("em", half_answers, ANSWERS) > 0
    assert {s.adapter: s.metric for s in task.standings}["format"] < task.metric_score
    # Generation and likelihood passes alternate on one model; its weights end bit-identical.
    after = tiny_loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_map_adapters_by_metric_still_prunes(tiny_loaded, pool_with_learned):
    config = HalvingConfig(start_examples=1, max_examples=8, criterion="metric", metric_from_round=-1)
    result = map_adapters([_task("new_task")], pool_with_learned, base_model=tiny_loaded, write=False,
                          progress=False, config=config)
    [task] = result.tasks
    assert task.rounds == [(8, 1), (4, 2), (2, 4), (1, 8)]
    assert task.round_criteria == ["likelihood", "likelihood", "likelihood", "metric"]
    # The metric round has one candidate left: it generates 8 answers; the likelihood passed
    # 8x1 + 4x1 + 2x2 + 1x4 new pairs instead of 8x8.
    assert task.generations == 8 and task.evaluations == 8 + 4 + 4 + 4 < 64
