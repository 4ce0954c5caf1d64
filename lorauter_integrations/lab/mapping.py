"""Task -> adapter mapping by validation score, with successive halving.

LoRAuter routes queries to *tasks*; each task then needs one adapter. When a pool is large or
unlabelled, the adapter of a task is the one that fits that task's validation set best. By
default fit is the mean teacher-forced log-likelihood of the reference answers (per answer token,
averaged over examples) with the candidate adapter active: one forward pass per example, no
generation (the ``"metric"`` criterion below generates for the final rounds).

Scoring every adapter on every example costs ``adapters x examples`` passes per task; successive
halving (Jamieson & Talwalkar, 2016; Li et al., Hyperband, 2017) scores all candidates on a few
examples, keeps the best half, doubles the examples and repeats, so the cost per task is about
``2 x adapters x start_examples`` passes plus a few rounds over a handful of survivors. Scores
of an (adapter, example) pair are computed once and reused by later rounds. Ties go to the
task's own adapter (the one trained on it), then to the adapter id, so results are deterministic.

Two criteria (``HalvingConfig.criterion``):

- ``"likelihood"`` (the default): the target likelihood above. Cheap, but it rewards the adapter
  whose *answer format* fits (a yes/no adapter for a yes/no task) more than the one that answers
  correctly: mnli_matched went to piqa, trivia_qa to sentiment140 (results/mapping.md).
- ``"metric"``: what the task measures. The rounds from ``metric_from_round`` on rank candidates
  by the task's own metric (``Example.metric``: EM, BLEU or ROUGE-L, as the evaluation scores
  them) on greedy answers generated with the candidate active; earlier rounds still prune by
  likelihood, where most candidates are and a forward pass is all a pair costs. Equal metric
  scores (frequent with EM on a few examples) go to the better likelihood, then as above.

Target likelihood *relative to the base model* is not a third criterion: the base model's
likelihood of a task's targets is the same number for every candidate, so subtracting it
changes the scores, never the ranking among adapters.

>>> from lorauter_integrations.lab.mapping import map_adapters
>>> result = map_adapters("data/flan/validation.jsonl", "lorauter_integrations/_adapters/flan")  # doctest: +SKIP
>>> result.mapping["cb"]  # doctest: +SKIP
'rte'
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ..data import Example, TaskSet, load_tasks
from ..errors import AdapterError, DatasetError, InvalidInputError
from ..engine.models import DEMO_MODEL, LoadedModel, load_base_model
from .training import _collate, answer_nll, encode_example, read_manifest, write_manifest

# A score function gets one candidate and example indices and returns one score per index
# (higher is better).
ScoreFn = Callable[[str, Sequence[int]], Sequence[float]]
# An answer function gets one candidate and example indices and returns its greedy answer to each.
AnswerFn = Callable[[str, Sequence[int]], Sequence[str]]
# A metric function gets the answers to examples ``0..n-1`` (in order) and returns the task's score
# of them (higher is better).
MetricFn = Callable[[Sequence[str]], float]


class HalvingConfig(BaseModel):
    """Knobs of successive halving (defaults keep a 1,500-adapter pool affordable)."""

    model_config = ConfigDict(frozen=True)

    start_examples: int = Field(default=2, ge=1, description="Examples per candidate in the first round.")
    max_examples: int | None = Field(
        default=8, ge=1, description="Examples in the last round at most (None: the whole validation set)."
    )
    keep: float = Field(default=0.5, gt=0.0, lt=1.0, description="Fraction of candidates kept per round.")
    batch_size: int = Field(default=8, ge=1, description="Sequences per forward pass.")
    max_length: int = Field(default=256, ge=16, description="Tokens per example (prompt start cut first).")
    criterion: Literal["likelihood", "metric"] = Field(
        default="likelihood",
        description="How candidates are ranked: mean target log-likelihood per answer token, or the task's "
                    "metric on greedy answers (from round `metric_from_round` on; ties by likelihood).",
    )
    metric_from_round: int = Field(
        default=1,
        description="With criterion 'metric', the first round ranked by the metric (0-based; negative counts "
                    "from the last round: -1 = the last round only). Earlier rounds prune by likelihood.",
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1,
        description="Generation budget of a metric answer (None: the task metric's evaluation budget).",
    )


def halving_schedule(n_candidates: int, n_examples: int, config: HalvingConfig) -> list[tuple[int, int]]:
    """``(candidates, examples)`` of every round of `successive_halving`: the schedule depends on
    the counts only, so the rounds ranked by the metric are known before any scoring."""
    limit = min(n_examples, config.max_examples or n_examples)
    alive, n = n_candidates, min(config.start_examples, limit)
    rounds = [(alive, n)]
    while alive > 1 and n < limit:
        alive, n = max(1, math.ceil(alive * config.keep)), min(n * 2, limit)
        rounds.append((alive, n))
    return rounds


def metric_rounds(n_rounds: int, config: HalvingConfig) -> list[bool]:
    """Which of ``n_rounds`` rounds rank by the metric (none under the likelihood criterion)."""
    if config.criterion != "metric":
        return [False] * n_rounds
    first = config.metric_from_round if config.metric_from_round >= 0 else n_rounds + config.metric_from_round
    return [r >= max(0, first) for r in range(n_rounds)]


class Standing(BaseModel):
    """One candidate of a round: its likelihood, and its metric when the round ranked by it."""

    adapter: str
    likelihood: float = Field(description="Mean log-probability per answer token, averaged over the round's examples.")
    metric: float | None = Field(default=None, description="The task's metric (0-100) on its greedy answers, "
                                                          "when the round ranked by the metric.")


class HalvingResult(BaseModel):
    """The winner of one task and how it was found."""

    winner: str
    score: float = Field(description="Winner's mean likelihood score over the examples of the last round.")
    metric_score: float | None = Field(
        default=None, description="Winner's task metric over the examples of the last round (criterion 'metric').")
    rounds: list[tuple[int, int]] = Field(description="(candidates, examples) of every round.")
    round_criteria: list[str] = Field(default_factory=list, description="'likelihood' or 'metric' per round.")
    evaluations: int = Field(description="(adapter, example) pairs scored; exhaustive = adapters x examples.")
    generations: int = Field(default=0, description="(adapter, example) greedy answers generated for the metric.")
    standings: list[Standing] = Field(default_factory=list, description="The last round's candidates, best first.")


class TaskMapping(BaseModel):
    """One task's adapter."""

    task: str
    adapter: str
    score: float
    own_adapter: str | None = None
    metric: str | None = Field(default=None, description="The task's metric, when it ranked candidates.")
    metric_score: float | None = None
    evaluations: int = 0
    generations: int = 0
    rounds: list[tuple[int, int]] = Field(default_factory=list)
    round_criteria: list[str] = Field(default_factory=list)
    standings: list[Standing] = Field(default_factory=list)


class MappingResult(BaseModel):
    """The task -> adapter map of a pool, with per-task details and cost."""

    mapping: dict[str, str]
    tasks: list[TaskMapping]
    evaluations: int
    exhaustive_evaluations: int
    generations: int = 0
    criterion: str = "likelihood"
    seconds: float


def successive_halving(
    candidates: Sequence[str],
    n_examples: int,
    score: ScoreFn,
    config: HalvingConfig = HalvingConfig(),
    *,
    preferred: str | None = None,
    answer: AnswerFn | None = None,
    metric: MetricFn | None = None,
) -> HalvingResult:
    """Find the best candidate over examples ``0..n`` by successive halving.

    Every round scores the surviving candidates by likelihood (``score``: per-example values,
    averaged). Under ``config.criterion == "metric"`` the rounds from ``metric_from_round`` on
    rank by ``metric`` of the candidate's ``answer``s to the round's examples instead, the
    likelihood breaking ties. ``preferred`` (the task's own adapter) wins remaining ties and is
    ranked first among equals at every cut. With ``start_examples >= max_examples`` this is
    exhaustive scoring. Per-example likelihoods and answers are computed once and reused.
    """
    if not candidates:
        raise InvalidInputError("no candidate adapters to choose from")
    if n_examples < 1:
        raise InvalidInputError("a task needs at least one example to be scored")
    if config.criterion == "metric" and (answer is None or metric is None):
        raise InvalidInputError("the 'metric' criterion needs an answer function and a metric function")
    cache: dict[tuple[str, int], float] = {}
    answers: dict[tuple[str, int], str] = {}
    alive = list(dict.fromkeys(candidates))
    schedule = halving_schedule(len(alive), n_examples, config)
    by_metric = metric_rounds(len(schedule), config)

    def likelihood(name: str, upto: int) -> float:
        missing = [i for i in range(upto) if (name, i) not in cache]
        if missing:
            for i, s in zip(missing, score(name, missing)):
                cache[(name, i)] = float(s)
        return sum(cache[(name, i)] for i in range(upto)) / upto

    def task_metric(name: str, upto: int) -> float:
        missing = [i for i in range(upto) if (name, i) not in answers]
        if missing:
            for i, a in zip(missing, answer(name, missing)):  # type: ignore[misc]
                answers[(name, i)] = a
        return float(metric([answers[(name, i)] for i in range(upto)]))  # type: ignore[misc]

    def ranked(names: list[str], upto: int, use_metric: bool) -> list[Standing]:
        rows = [Standing(adapter=name, likelihood=likelihood(name, upto),
                         metric=task_metric(name, upto) if use_metric else None) for name in names]
        # Best metric (when used), then best likelihood; on a tie the preferred adapter, then the
        # smaller id.
        return sorted(rows, key=lambda r: (-(r.metric or 0.0), -r.likelihood, r.adapter != preferred, r.adapter))

    for r, (_, n) in enumerate(schedule):
        order = ranked(alive, n, by_metric[r])
        if r + 1 < len(schedule):
            alive = [row.adapter for row in order[: schedule[r + 1][0]]]
    best = order[0]
    return HalvingResult(winner=best.adapter, score=best.likelihood, metric_score=best.metric, rounds=schedule,
                         round_criteria=["metric" if m else "likelihood" for m in by_metric],
                         evaluations=len(cache), generations=len(answers), standings=order)


class AdapterScorer:
    """Scores adapters of a pool on examples: mean log-likelihood of the answer tokens, and
    greedy answers for the task metric.

    For likelihood, each adapter is folded into the base weights for its batch of examples (the
    composer's merged path, restored bit-exactly afterwards), so a scoring pass runs at base-model
    speed. Answers come from a `RoutedModel` over the same model and pool (built on first use),
    with the adapter as an override route and temperature 0: the prompts, chat template, stop
    tokens and budget of ``lorauter eval``, so the metric scores the answers evaluation would see.
    """

    def __init__(self, loaded: LoadedModel, pool, config: HalvingConfig = HalvingConfig()):
        from ..compose import Composer

        self.loaded = loaded
        self.pool = pool.bind(loaded.model, loaded.base_model_id)
        self.config = config
        self.composer = Composer(loaded.model, self.pool, max_cached=1)
        self._engine = None

    @property
    def engine(self):
        """The `RoutedModel` that generates answers (built on first use; it restores the model's
        weights before `generate` returns, so likelihood passes and generation can alternate)."""
        if self._engine is None:
            from ..engine.local import RoutedModel

            self._engine = RoutedModel(self.loaded, pool=self.pool, max_resident_compositions=1,
                                       max_batch_size=self.config.batch_size)
        return self._engine

    def answers(self, adapter_id: str, examples: Sequence[Example], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers to ``examples`` with ``adapter_id`` active (budget: ``max_new_tokens``,
        else ``config.max_new_tokens``, else the evaluation budget of the examples' metric)."""
        from .evaluation.metrics import max_new_tokens_for

        if not examples:
            return []
        metrics = {e.metric for e in examples}
        budget = max_new_tokens or self.config.max_new_tokens or max(max_new_tokens_for(m) for m in metrics)
        route = self.engine.route_from_override([adapter_id])
        out = self.engine.generate([e.inputs for e in examples], [route] * len(examples),
                                   max_new_tokens=budget, temperature=0.0)
        return [g.text for g in out]

    def encode(self, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
        missing = [e for e in examples if e.targets is None]
        if missing:
            raise DatasetError(f"task '{missing[0].task}' has examples without `targets`: they cannot be scored")
        return [encode_example(self.loaded.tokenizer, e.inputs, e.targets, self.config.max_length) for e in examples]

    def score(self, adapter_id: str, encoded: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Mean log-probability per answer token of every encoded example under ``adapter_id``."""
        import torch

        from ..route import Route

        route = Route(strategy="mapping", adapters=[adapter_id], weights=[1.0])
        composition = self.composer.composition(route)
        out: list[float] = []
        with torch.no_grad(), self.composer.activate(composition, merge=True):
            # Similar lengths together: less padding per forward pass.
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
            scores: dict[int, float] = {}
            for s in range(0, len(order), self.config.batch_size):
                idx = order[s : s + self.config.batch_size]
                ids, mask, labels = _collate([encoded[i] for i in idx], self.loaded.tokenizer.pad_token_id,
                                             self.loaded.device)
                nll, count = answer_nll(self.loaded.model, ids, mask, labels)
                for i, v in zip(idx, (-nll / count.clamp(min=1)).tolist()):
                    scores[i] = v
            out = [scores[i] for i in range(len(encoded))]
        return out


def own_adapters(manifest: Mapping) -> dict[str, str]:
    """Task -> the adapter trained on it (``trained_on`` in the manifest, else the adapter whose id
    is the task's name)."""
    own: dict[str, str] = {}
    for entry in manifest.get("adapters", []):
        for task in entry.get("trained_on", []):
            own.setdefault(task, entry["id"])
    for entry in manifest.get("adapters", []):
        own.setdefault(entry["id"], entry["id"])
    return own


def map_adapters(
    validation: str | Path | Sequence[TaskSet],
    pool_dir: str | Path,
    *,
    base_model: str | LoadedModel = DEMO_MODEL,
    config: HalvingConfig = HalvingConfig(),
    tasks: Sequence[str] | None = None,
    write: bool = True,
    progress: bool = True,
) -> MappingResult:
    """Map every task of ``validation`` (or the named ``tasks``) to the pool's best adapter for it.

    With ``write`` the pool manifest is updated: each mapped task is listed under its adapter's
    ``tasks`` only (the pool gives a task to the first adapter that lists it).
    """
    from ..adapters.pool import AdapterPool

    task_sets = load_tasks(validation) if isinstance(validation, (str, Path)) else list(validation)
    if tasks is not None:
        known = {t.task for t in task_sets}
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise InvalidInputError(f"unknown task(s) {', '.join(unknown)}; the validation file has {len(known)} tasks")
        task_sets = [t for t in task_sets if t.task in set(tasks)]
    pool = AdapterPool.from_dir(pool_dir)
    if not len(pool):
        raise AdapterError(f"the pool {pool_dir} holds no adapter: train or add adapters first")
    manifest = read_manifest(pool_dir)
    listed = {a["id"] for a in manifest["adapters"]}
    if write and any(a not in listed for a in pool.ids):
        # A pool of bare adapter folders: give it a manifest to record the map in.
        root = Path(pool_dir).resolve()
        manifest["adapters"] += [
            {"id": r.id, "path": str(r.path.relative_to(root)), "tasks": [], "description": r.description}
            for r in pool.records if r.id not in listed
        ]
        manifest["base_model"] = manifest.get("base_model") or next(
            (r.base_model for r in pool.records if r.base_model), None)
        write_manifest(pool_dir, manifest)
    own = own_adapters(manifest)
    loaded = base_model if isinstance(base_model, LoadedModel) else load_base_model(base_model)
    scorer = AdapterScorer(loaded, pool, config)

    start = time.perf_counter()
    results: list[TaskMapping] = []
    exhaustive = 0
    for task in tqdm(task_sets, desc="map adapters", unit="task", disable=not progress):
        examples = task.examples[: config.max_examples or len(task.examples)]
        encoded = scorer.encode(examples)
        mine = own.get(task.task) if own.get(task.task) in pool else None
        answer, metric, metric_name = None, None, None
        if config.criterion == "metric":
            answer, metric, metric_name = _metric_functions(scorer, examples)
        found = successive_halving(
            pool.ids, len(encoded), lambda a, idx: scorer.score(a, [encoded[i] for i in idx]), config, preferred=mine,
            answer=answer, metric=metric,
        )
        exhaustive += len(pool) * len(encoded)
        results.append(TaskMapping(task=task.task, adapter=found.winner, score=found.score, own_adapter=mine,
                                   metric=metric_name, metric_score=found.metric_score,
                                   evaluations=found.evaluations, generations=found.generations,
                                   rounds=found.rounds, round_criteria=found.round_criteria,
                                   standings=found.standings))
        if write:  # after every task: an interrupted run keeps what it has mapped
            write_mapping(pool_dir, {task.task: found.winner})
    result = MappingResult(
        mapping={r.task: r.adapter for r in results},
        tasks=results,
        evaluations=sum(r.evaluations for r in results),
        exhaustive_evaluations=exhaustive,
        generations=sum(r.generations for r in results),
        criterion=config.criterion,
        seconds=round(time.perf_counter() - start, 1),
    )
    return result


def _metric_functions(scorer: AdapterScorer, examples: Sequence[Example]) -> tuple[AnswerFn, MetricFn, str]:
    """The answer and metric functions of one task: its examples' metric (one per task), scored as
    the evaluation scores a task (`task_score`: corpus BLEU, mean EM or ROUGE-L)."""
    from .evaluation.metrics import task_score

    metrics = sorted({e.metric for e in examples})
    if len(metrics) != 1:
        raise DatasetError(f"task '{examples[0].task}' mixes metrics {metrics}: the 'metric' criterion needs one")
    name = metrics[0]
    refs = [e.targets or "" for e in examples]

    def answer(adapter_id: str, idx: Sequence[int]) -> list[str]:
        return scorer.answers(adapter_id, [examples[i] for i in idx])

    def metric(answers: Sequence[str]) -> float:
        return task_score(name, list(answers), refs[: len(answers)])

    return answer, metric, name


def write_mapping(pool_dir: str | Path, mapping: Mapping[str, str]) -> Path:
    """Record ``task -> adapter`` in the manifest: each task listed under exactly one adapter."""
    manifest = read_manifest(pool_dir)
    ids = {a["id"] for a in manifest["adapters"]}
    missing = sorted({a for a in mapping.values() if a not in ids})
    if missing:
        raise AdapterError(f"adapters {missing} are not in {pool_dir}/adapters.json; register them first")
    for entry in manifest["adapters"]:
        kept = [t for t in entry.get("tasks", []) if t not in mapping]
        entry["tasks"] = kept + sorted(t for t, a in mapping.items() if a == entry["id"])
    return write_manifest(pool_dir, manifest)
