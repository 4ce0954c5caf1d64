"""Task -> adapter mapping by validation score, with successive halving.

LoRAuter routes queries to *tasks*; each task then needs one adapter. When a pool is large or
unlabelled, the adapter of a task is the one that fits that task's validation set best. Fit is
the mean teacher-forced log-likelihood of the reference answers (per answer token, averaged over
examples) with the candidate adapter active: one forward pass per example, no generation.

Scoring every adapter on every example costs ``adapters x examples`` passes per task; successive
halving (Jamieson & Talwalkar, 2016; Li et al., Hyperband, 2017) scores all candidates on a few
examples, keeps the best half, doubles the examples and repeats, so the cost per task is about
``2 x adapters x start_examples`` passes plus a few rounds over a handful of survivors. Scores
of an (adapter, example) pair are computed once and reused by later rounds. Ties go to the
task's own adapter (the one trained on it), then to the adapter id, so results are deterministic.

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

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ..data import Example, TaskSet, load_tasks
from ..errors import AdapterError, DatasetError, InvalidInputError
from ..engine.models import DEMO_MODEL, LoadedModel, load_base_model
from .training import _collate, answer_nll, encode_example, read_manifest, write_manifest

# A score function gets one candidate and example indices and returns one score per index
# (higher is better).
ScoreFn = Callable[[str, Sequence[int]], Sequence[float]]


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


class HalvingResult(BaseModel):
    """The winner of one task and how it was found."""

    winner: str
    score: float = Field(description="Winner's mean score over the examples of the last round.")
    rounds: list[tuple[int, int]] = Field(description="(candidates, examples) of every round.")
    evaluations: int = Field(description="(adapter, example) pairs scored; exhaustive = adapters x examples.")


class TaskMapping(BaseModel):
    """One task's adapter."""

    task: str
    adapter: str
    score: float
    own_adapter: str | None = None
    evaluations: int = 0
    rounds: list[tuple[int, int]] = Field(default_factory=list)


class MappingResult(BaseModel):
    """The task -> adapter map of a pool, with per-task details and cost."""

    mapping: dict[str, str]
    tasks: list[TaskMapping]
    evaluations: int
    exhaustive_evaluations: int
    seconds: float


def successive_halving(
    candidates: Sequence[str],
    n_examples: int,
    score: ScoreFn,
    config: HalvingConfig = HalvingConfig(),
    *,
    preferred: str | None = None,
) -> HalvingResult:
    """Find the candidate with the best mean score over examples ``0..n`` by successive halving.

    ``preferred`` (the task's own adapter) wins ties and is ranked first among equals at every
    cut. With ``start_examples >= max_examples`` this is exhaustive scoring.
    """
    if not candidates:
        raise InvalidInputError("no candidate adapters to choose from")
    if n_examples < 1:
        raise InvalidInputError("a task needs at least one example to be scored")
    limit = min(n_examples, config.max_examples or n_examples)
    cache: dict[tuple[str, int], float] = {}
    alive = list(dict.fromkeys(candidates))
    n = min(config.start_examples, limit)
    rounds: list[tuple[int, int]] = []

    def ranked(names: list[str], upto: int) -> list[tuple[float, str]]:
        means = []
        for name in names:
            missing = [i for i in range(upto) if (name, i) not in cache]
            if missing:
                for i, s in zip(missing, score(name, missing)):
                    cache[(name, i)] = float(s)
            means.append((sum(cache[(name, i)] for i in range(upto)) / upto, name))
        # Best mean first; on a tie the preferred adapter, then the smaller id.
        return sorted(means, key=lambda m: (-m[0], m[1] != preferred, m[1]))

    while True:
        rounds.append((len(alive), n))
        order = ranked(alive, n)
        if len(alive) == 1 or n >= limit:
            best_score, winner = order[0]
            break
        alive = [name for _, name in order[: max(1, math.ceil(len(alive) * config.keep))]]
        n = min(n * 2, limit)
    return HalvingResult(winner=winner, score=best_score, rounds=rounds, evaluations=len(cache))


class AdapterScorer:
    """Scores adapters of a pool on examples: mean log-likelihood of the answer tokens.

    Each adapter is folded into the base weights for its batch of examples (the composer's
    merged path, restored bit-exactly afterwards), so a scoring pass runs at base-model speed.
    """

    def __init__(self, loaded: LoadedModel, pool, config: HalvingConfig = HalvingConfig()):
        from ..compose import Composer

        self.loaded = loaded
        self.pool = pool.bind(loaded.model, loaded.base_model_id)
        self.config = config
        self.composer = Composer(loaded.model, self.pool, max_cached=1)

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
        encoded = scorer.encode(task.examples[: config.max_examples or len(task.examples)])
        mine = own.get(task.task) if own.get(task.task) in pool else None
        found = successive_halving(
            pool.ids, len(encoded), lambda a, idx: scorer.score(a, [encoded[i] for i in idx]), config, preferred=mine
        )
        exhaustive += len(pool) * len(encoded)
        results.append(TaskMapping(task=task.task, adapter=found.winner, score=found.score, own_adapter=mine,
                                   evaluations=found.evaluations, rounds=found.rounds))
        if write:  # after every task: an interrupted run keeps what it has mapped
            write_mapping(pool_dir, {task.task: found.winner})
    result = MappingResult(
        mapping={r.task: r.adapter for r in results},
        tasks=results,
        evaluations=sum(r.evaluations for r in results),
        exhaustive_evaluations=exhaustive,
        seconds=round(time.perf_counter() - start, 1),
    )
    return result


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
