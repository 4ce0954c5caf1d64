"""The similarity floor of a task store, calibrated on the store's own validation examples.

Below the floor (the top task's cosine similarity), `LoRAuterRouter` falls back to the base model
(or to a damped mixture). A floor fitted once on one store (the Flan demo's 0.21,
``scripts/floor_study.py``) is wrong for another store: other tasks, another similarity scale. So
each store calibrates its own, the way ``scripts/floor_study.py`` does on the Flan validation set:

1. cross-validation inside each task: a task's examples (in indexing order) are dealt into
   ``folds`` folds by position (example ``i`` of a task goes to fold ``i % folds``);
2. for each fold, the representation is fitted on the other folds of every task (the store's own
   recipe, `TaskStore._fit_representation`) and the held-out examples are scored against every
   task vector: the cosine the router compares with its floor (a task with several prototypes
   scores with its best one), keeping the top-1 similarity of each held-out example;
3. the floor is the largest value of the grid ``-1, -0.9975, ..., 0.9975`` (steps of 0.0025) that
   keeps at least ``keep`` (99%) of these cross-validated examples routed (top-1 >= floor).

The held-out examples' own tasks are indexed, so the floor costs at most ``1 - keep`` of the
in-distribution queries; what it catches out of distribution depends on the store (measured for the
demo store in ``results/floor/``).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInputError
from .representations import make_representation

# The store is passed in (a `TaskStore`, used through its methods): this module sits below
# store.py, which calls it at the end of `index`, so it does not import it, not even for typing.
TaskStore = Any

#: Steps of the floor grid (``scripts/floor_study.py``'s).
FLOOR_STEP = 0.0025
#: The calibration's defaults (``scripts/floor_study.py``'s): 5 folds, keep 99% of the CV examples routed.
DEFAULT_FOLDS = 5
DEFAULT_KEEP = 0.99
_QUANTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


class FloorCalibration(BaseModel):
    """A store's calibrated similarity floor for one representation, and what it was computed on."""

    model_config = ConfigDict(extra="forbid")

    representation: str = Field(description="The task representation whose similarities were calibrated.")
    floor: float = Field(ge=-1.0, le=1.0, description="Largest grid floor keeping >= keep of the CV examples routed.")
    keep: float = Field(gt=0.0, le=1.0, description="Share of cross-validated indexed examples the floor keeps routed.")
    folds: int = Field(ge=2, description="Folds of the cross-validation inside each task.")
    n_examples: int = Field(ge=1, description="Examples scored (every indexed example, once, held out).")
    n_tasks: int = Field(ge=1)
    routed: float = Field(ge=0.0, le=1.0, description="Share of the CV examples the floor actually keeps routed.")
    quantiles: dict[str, float] = Field(description="Quantiles (p1..p99) and mean of the CV top-1 similarity.")
    seconds: float = Field(0.0, ge=0.0, description="Calibration time.")
    tasks_fingerprint: str = Field("", description="The store's tasks it was calibrated on (see TaskStore).")
    calibrated_at: str = ""


def parse_floor(value: object, *, where: str = "floor") -> float | str | None:
    """A floor setting as the router takes it: ``"auto"`` (the floor recorded in the store for the
    router's representation, none if none is recorded), None (no floor; also the strings ``"none"``
    and ``"off"``), or a number (also as text, from lorauter.toml or ``$LORAUTER_FLOOR``)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text in ("none", "off"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise InvalidInputError(f"{where} must be 'auto', 'none'/'off' or a similarity (a number), "
                                    f"not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"{where} must be 'auto', 'none'/'off' or a similarity (a number), not {value!r}")
    if not np.isfinite(value):
        raise InvalidInputError(f"{where} must be a finite similarity, not {value!r}")
    return float(value)


def min_examples_per_task(folds: int) -> int:
    """Examples every task needs: one held out in each fold (and ``folds - 1`` left to fit on)."""
    return folds


def _check_args(keep: float, folds: int) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise InvalidInputError(f"keep must be a share in (0, 1], e.g. 0.99, not {keep!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise InvalidInputError(f"folds must be an integer >= 2, not {folds!r}")


def too_few_examples(task_of: Sequence[str], folds: int) -> dict[str, int]:
    """Tasks with fewer examples than the cross-validation needs, with their counts."""
    counts: dict[str, int] = {}
    for t in task_of:
        counts[t] = counts.get(t, 0) + 1
    need = min_examples_per_task(folds)
    return {t: n for t, n in counts.items() if n < need}


def top_similarities(rep, train_feats: np.ndarray, train_tasks: np.ndarray, query_feats: np.ndarray) -> np.ndarray:
    """Each query's top-1 task similarity: the cosine to every task vector built from ``train_feats``
    (``rep.task_vectors`` per task, as the store writes them), the best prototype per task."""
    protos = np.vstack([rep.task_vectors(train_feats[train_tasks == t]) for t in dict.fromkeys(train_tasks.tolist())])
    protos = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    q = query_feats / np.maximum(np.linalg.norm(query_feats, axis=1, keepdims=True), 1e-12)
    return (q @ protos.T).max(axis=1)  # Chroma's cosine space: 1 - distance = the cosine


class _CountsCache:
    """The hybrid representation's lexical counts of the store's texts, computed once for all folds.

    Hashed n-gram counts depend on the text and the configuration only (no fitted state), and
    counting is most of a fit's time (every fold counts its texts for the document frequencies, the
    discriminant and the task vectors, then the held-out queries). Representations without
    ``_counts`` (paper) are left alone.
    """

    def __init__(self, rep, texts: Sequence[str]):
        self.blocks = rep._counts(list(texts)) if hasattr(rep, "_counts") else None
        self.row = {t: i for i, t in enumerate(texts)}
        self.compute = getattr(rep, "_counts", None)

    def install(self, rep):
        if self.blocks is not None and hasattr(rep, "_counts"):
            def counts(texts: Sequence[str]):
                rows = [self.row.get(t) for t in texts]
                if any(r is None for r in rows):  # not a store text: count it
                    return self.compute(list(texts))
                return [m[rows] for m in self.blocks]

            rep._counts = counts
        return rep


def cross_validated_similarities(store: TaskStore, representation: str, folds: int,
                                 rows: tuple | None = None, on_fold=None) -> np.ndarray:
    """The top-1 similarity of every indexed example, held out of the fit (folds inside tasks)."""
    texts, dense, task_of, domains = rows if rows is not None else store.example_rows()
    tasks = np.asarray(task_of)
    position = np.zeros(len(tasks), dtype=int)
    seen: dict[str, int] = {}
    for i, t in enumerate(task_of):
        position[i] = seen.get(t, 0)
        seen[t] = position[i] + 1
    out = np.empty(len(tasks), dtype=np.float64)
    counts = _CountsCache(make_representation(representation), texts)
    for f in range(folds):
        held = position % folds == f
        if not held.any():
            continue
        train = np.flatnonzero(~held)
        rep, feats = store._fit_representation(
            representation, [texts[i] for i in train], dense[train], [task_of[i] for i in train],
            [domains[i] for i in train], rep=counts.install(make_representation(representation)))
        q = np.flatnonzero(held)
        out[q] = top_similarities(rep, feats, tasks[train], rep.featurize([texts[i] for i in q], dense[q]))
        if on_fold is not None:
            on_fold()
    return out


def floor_from_similarities(sims: np.ndarray, keep: float) -> float:
    """The largest grid floor (``-1 .. 1`` by `FLOOR_STEP`) with ``mean(sims >= floor) >= keep``
    (``scripts/floor_study.py``'s rule; its grid started at 0, which gives the same floor whenever
    it is >= 0)."""
    sims = np.sort(np.asarray(sims, dtype=np.float64))
    grid = np.round(np.arange(-1.0, 1.0, FLOOR_STEP), 4)
    routed = (len(sims) - np.searchsorted(sims, grid, side="left")) / len(sims)
    ok = grid[routed >= keep]
    return float(ok.max()) if len(ok) else -1.0


def quantiles(sims: np.ndarray) -> dict[str, float]:
    x = np.asarray(sims, dtype=float)
    return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in _QUANTILES} | {"mean": round(float(x.mean()), 4)}


def calibrate_floor(store: TaskStore, representation: str = "hybrid", keep: float = DEFAULT_KEEP,
                    folds: int = DEFAULT_FOLDS, *,
                    record: bool = False, rows: tuple | None = None, on_fold=None) -> FloorCalibration:
    """Calibrate ``store``'s similarity floor for ``representation`` on its indexed examples.

    ``record``: also record it in the store (`TaskStore.record_floor`), where
    ``LoRAuterRouter(floor="auto")`` finds it. ``rows``: the store's `example_rows()` when the
    caller has them; ``on_fold``: called after each fold (a progress bar). Refused
    (`InvalidInputError`) when a task has fewer than ``folds`` examples, or the store has one task.
    """
    _check_args(keep, folds)
    store._rep(representation)  # a representation this store keeps
    started = time.perf_counter()
    rows = rows if rows is not None else store.example_rows()
    task_of = rows[2]
    if not task_of:
        raise InvalidInputError("the task store is empty: index tasks before calibrating its floor")
    short = too_few_examples(task_of, folds)
    if short:
        listed = ", ".join(f"{t} ({n})" for t, n in sorted(short.items())[:5])
        raise InvalidInputError(
            f"cannot calibrate the similarity floor with {folds}-fold cross-validation: every task needs at "
            f"least {min_examples_per_task(folds)} indexed examples, and {len(short)} task(s) have fewer: "
            f"{listed}{' ...' if len(short) > 5 else ''}; index more examples of them or use fewer folds"
        )
    n_tasks = len(set(task_of))
    if n_tasks < 2:
        raise InvalidInputError("cannot calibrate the similarity floor on a store of one task: index at least two")
    sims = cross_validated_similarities(store, representation, folds, rows, on_fold)
    floor = floor_from_similarities(sims, keep)
    cal = FloorCalibration(
        representation=representation, floor=floor, keep=float(keep), folds=folds, n_examples=len(sims),
        n_tasks=n_tasks, routed=round(float(np.mean(sims >= floor)), 4), quantiles=quantiles(sims),
        seconds=round(time.perf_counter() - started, 3), tasks_fingerprint=store.tasks_fingerprint(),
        calibrated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if record:
        store.record_floor(cal)
    return cal


__all__ = ["DEFAULT_FOLDS", "DEFAULT_KEEP", "FLOOR_STEP", "FloorCalibration", "calibrate_floor", "cross_validated_similarities",
           "floor_from_similarities", "min_examples_per_task", "parse_floor", "top_similarities"]
