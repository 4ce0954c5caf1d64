"""End-to-end evaluation on the tiny engine: scoring, OOD exclusion, generation reuse, reports."""

from __future__ import annotations

import pytest

from lorauter_integrations.data import Example
from lorauter_integrations.engine import RoutedModel
from lorauter_integrations.lab.evaluation.e2e import (
    bootstrap_intervals,
    evaluate_e2e,
    markdown,
    per_adapter_markdown,
    plot,
    select_queries,
)
from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.route import Route

PROMPTS = ["Is this review positive or negative? The film was a joy.", "Translate to French: the cat sits.",
           "What is the capital of France?", "Summarize: the committee met on Tuesday."]
BUDGET = {"em": 4, "rouge": 4, "bleu": 4}


class EveryAdapterRouter:
    """A real (if trivial) router: all of a, b, c, equally, minus excluded tasks' adapters."""

    strategy = "everything"

    def __init__(self, task_to_adapter):
        self.task_to_adapter = task_to_adapter

    def route(self, text, *, exclude_tasks=()):
        banned = {self.task_to_adapter[t] for t in exclude_tasks if t in self.task_to_adapter}
        # Deliberately keeps "c" even when excluded, like strategies that ignore exclusion.
        adapters = [a for a in ("a", "b", "c") if a not in banned or a == "c"]
        return Route(strategy=self.strategy, adapters=adapters, weights=[1 / len(adapters)] * len(adapters))


@pytest.fixture
def engine(tiny_loaded, tiny_pool_dir):
    pool = AdapterPool.from_dir(tiny_pool_dir)
    return RoutedModel(tiny_loaded, pool=pool, router=EveryAdapterRouter(pool.task_to_adapter))


@pytest.fixture
def queries(engine):
    """Two tasks whose references are what their own adapter answers: oracle EM is 100."""
    out = []
    for task, adapter, domain in (("task_b", "b", "dom1"), ("task_c", "c", "dom2")):
        gens = engine.generate(PROMPTS, [engine.route_from_override([adapter])] * len(PROMPTS), max_new_tokens=4)
        out += [Example(task=task, domain=domain, metric="em", inputs=p, targets=g.text) for p, g in zip(PROMPTS, gens)]
    return out


def test_the_oracle_reproduces_its_own_answers_and_is_the_100_percent_reference(engine, queries):
    report = evaluate_e2e(engine, queries, strategies=["base", "oracle", "everything"], tasks=["task_b", "task_c"],
                          limit_per_task=None, max_new_tokens=BUDGET, progress=False)
    [res] = report.results
    assert res.mean["oracle"] == 100.0 and res.pct_of_oracle["oracle"] == 100.0
    assert {t.task: t.n for t in res.tasks} == {"task_b": 4, "task_c": 4}
    assert set(res.domains) == {"dom1", "dom2"} and res.domains["dom1"]["oracle"] == 100.0
    assert res.mean["base"] < 100.0  # the adapters really change the answers
    assert len(res.samples) == 3 * 8


def test_ood_mode_never_uses_the_query_own_adapter(engine, queries):
    report = evaluate_e2e(engine, queries, strategies=["oracle", "everything"], ood_modes=(False, True),
                          tasks=["task_b", "task_c"], limit_per_task=2, max_new_tokens=BUDGET, progress=False)
    own = {"task_b": "b", "task_c": "c"}
    id_res, ood_res = report.results
    for sample in ood_res.samples:
        if sample["strategy"] == "everything":
            assert own[sample["task"]] not in sample["adapters"]
            assert abs(sum(sample["adapters"].values()) - 1.0) < 1e-2
    assert all(own[s["task"]] in s["adapters"] for s in id_res.samples if s["strategy"] == "everything")
    # The oracle keeps the own adapter in both modes (it is the reference).
    assert all(own[s["task"]] in s["adapters"] for s in ood_res.samples if s["strategy"] == "oracle")


def test_each_distinct_prompt_and_route_is_generated_once(engine, queries):
    report = evaluate_e2e(engine, queries, strategies=["base", "oracle"], ood_modes=(False, True),
                          tasks=["task_b"], limit_per_task=3, max_new_tokens=BUDGET, progress=False)
    assert report.generations == 3 * 2  # base and oracle are not re-generated for the OOD mode
    assert report.results[0].mean == report.results[1].mean


def test_reports_render_as_markdown_and_png(engine, queries, tmp_path):
    report = evaluate_e2e(engine, queries, strategies=["base", "oracle"], tasks=["task_b", "task_c"],
                          limit_per_task=1, max_new_tokens=BUDGET, progress=False)
    text = markdown(report)
    assert "| **mean** |" in text and "task_c" in text and "% of oracle" in text
    table = per_adapter_markdown(report)
    assert table.count("\n") == 2 + 2 + 1  # header, rule, two tasks, mean
    png = plot(report, tmp_path / "e2e.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_query_selection_takes_the_first_n_of_each_wanted_task():
    exs = [Example(task=t, inputs=f"{t} {i}", targets="x") for i in range(5) for t in ("a", "b", "c")]
    chosen = select_queries(exs, ["a", "c"], 2)
    assert [e.inputs for e in chosen] == ["a 0", "c 0", "a 1", "c 1"]


def test_a_second_run_reuses_cached_answers(engine, queries, tmp_path):
    cache = tmp_path / "answers.json"
    kw = dict(tasks=["task_b"], limit_per_task=2, max_new_tokens=BUDGET, progress=False, cache=cache)
    first = evaluate_e2e(engine, queries, strategies=["base", "oracle"], **kw)
    engine.generate = None  # any generation now would fail: everything must come from the cache
    second = evaluate_e2e(engine, queries, strategies=["oracle", "base"], **kw)
    assert second.results[0].mean == first.results[0].mean


def test_bootstrap_intervals_are_paired_and_bracket_the_task_mean():
    """Identical strategies differ by exactly 0; a strategy right on every query of every task is
    above one that is always wrong with an interval excluding 0; BLEU tasks resample corpus BLEU."""
    refs = [f"answer {i}" for i in range(10)]
    items = {
        "em_task": {"good": [(r, r) for r in refs], "same": [(r, r) for r in refs],
                    "half": [(r if i % 2 else "x", r) for i, r in enumerate(refs)]},
        "bleu_task": {"good": [("the cat sat on the mat", "the cat sat on the mat")] * 5,
                      "same": [("the cat sat on the mat", "the cat sat on the mat")] * 5,
                      "half": [("the cat sat on a mat", "the cat sat on the mat")] * 5},
    }
    metrics_ = {"em_task": "em", "bleu_task": "bleu"}
    ci, paired = bootstrap_intervals(items, metrics_, ["good", "same", "half"],
                                     [("good", "same"), ("good", "half")], resamples=200)
    assert ci["good"] == (100.0, 100.0)
    lo, hi = ci["half"]
    assert lo < hi < 100.0
    same, half = paired
    assert (same.diff, same.ci95, same.excludes_zero) == (0.0, (0.0, 0.0), False)
    assert half.diff > 0 and half.ci95[0] > 0 and half.excludes_zero


def test_strategy_variants_parse_with_their_settings():
    from lorauter_integrations.errors import InvalidInputError
    from lorauter_integrations.lab.evaluation.e2e import default_pairs, parse_strategy, split_strategies

    specs = split_strategies("base, lorauter,lorauter[floor=0.21,below_floor=damped] ,lorauter[k=1]")
    assert specs == ["base", "lorauter", "lorauter[floor=0.21,below_floor=damped]", "lorauter[k=1]"]
    assert parse_strategy(specs[2]) == ("lorauter", {"floor": 0.21, "below_floor": "damped"})
    assert parse_strategy(specs[3]) == ("lorauter", {"k": 1})
    assert ("lorauter[k=1]", "lorauter") in default_pairs(specs)
    for bad in ("lorauter[floor]", "lorauter[floor=0.2", "two words"):
        with pytest.raises(InvalidInputError):
            parse_strategy(bad)


def test_a_floor_variant_falls_back_beside_the_plain_strategy(tiny_engine):
    # Queries of the tiny store's own tasks; a floor above any cosine sends every query to the base
    # model, so the variant scores exactly as base, while plain lorauter routes them.
    from lc_support import TASKS

    queries = [Example(task=t, domain="d", metric="em", inputs=text, targets="x")
               for t, texts in TASKS.items() for text in texts[:2]]
    strategies = ["base", "lorauter", "lorauter[floor=1.01]", "lorauter[floor=1.01,below_floor=damped,damping=0.25]"]
    report = evaluate_e2e(tiny_engine, queries, strategies=strategies, tasks=sorted(TASKS), limit_per_task=None,
                          max_new_tokens=BUDGET, progress=False, bootstrap=0)
    [res] = report.results
    assert res.fallback_rate["lorauter"] == 0.0
    assert res.fallback_rate["lorauter[floor=1.01]"] == 1.0
    assert res.fallback_rate[strategies[3]] == 1.0
    samples = {(s["strategy"], s["task"], i % 2): s for i, s in enumerate(res.samples)}
    assert all(s["adapters"] == {} for s in res.samples if s["strategy"] == "lorauter[floor=1.01]")
    damped = [s for s in res.samples if s["strategy"] == strategies[3]]
    assert damped and all(abs(sum(s["adapters"].values()) - 0.25) < 1e-2 for s in damped)
    base = [s["answer"] for s in res.samples if s["strategy"] == "base"]
    assert [s["answer"] for s in res.samples if s["strategy"] == "lorauter[floor=1.01]"] == base
    assert samples  # every sample carries its strategy label


def test_dropping_an_own_adapter_keeps_a_damped_route_damped():
    from lorauter_integrations.lab.evaluation.e2e import _drop_adapters

    damped = Route(strategy="lorauter", adapters=["a", "b"], weights=[0.3, 0.2], fallback=True)
    kept = _drop_adapters(damped, frozenset({"a"}))
    assert kept.adapters == ["b"] and kept.weights == pytest.approx([0.5])


def test_an_answerer_without_routes_is_scored_and_paired_like_a_strategy(engine, queries):
    # An answerer that returns each query's reference scores 100, like the oracle here.
    def references(qs, ood, budgets):
        assert set(budgets) == {"em", "bleu", "rouge"}
        return [q.targets for q in qs]

    report = evaluate_e2e(engine, queries, strategies=["base", "oracle"], tasks=["task_b", "task_c"],
                          limit_per_task=2, max_new_tokens=BUDGET, progress=False, bootstrap=50,
                          answerers={"echo": references}, pairs=[("echo", "base")])
    [res] = report.results
    assert res.mean["echo"] == 100.0 and res.strategies == ["base", "oracle", "echo"]
    assert res.paired[0].a == "echo" and res.paired[0].diff == pytest.approx(100.0 - res.mean["base"], abs=0.01)
    with pytest.raises(Exception, match="gave 1 answers"):
        evaluate_e2e(engine, queries, strategies=["base"], tasks=["task_b"], limit_per_task=2,
                     max_new_tokens=BUDGET, progress=False, answerers={"short": lambda qs, ood, b: ["x"]})
