"""LoRAuter routing (arXiv 2601.21795): match the query to *tasks*, compose their adapters.

1. embed the query; 2. cosine similarity to every task representation (a Chroma query);
3. keep the top-K tasks, weight them ``softmax(sim / tau)``; 4. map tasks to adapters, adding the
weights of tasks that share an adapter. Below a similarity floor (the top task's similarity),
no indexed task covers the prompt: fall back to the base model (``below_floor="base"``) or to the
mixture scaled by ``damping`` (``below_floor="damped"``: ``W x + damping * sum_i w_i B_i A_i x``).

The floor is calibrated per store, on the store's own validation examples (`floor`:
5-fold cross-validation inside each task, the largest floor that keeps 99% of the held-out
examples routed), and recorded in the store by `index` (or ``lorauter calibrate-floor``);
``floor="auto"`` (`DEFAULT_FLOOR`) routes with the floor recorded for the router's representation,
or with none when none is recorded. The method comes from ``scripts/floor_study.py`` (which also
measures queries whose task is not indexed, on the Flan validation sets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from ..errors import InvalidInputError
from .base import Router, Stopwatch, merge_by_adapter, softmax
from ..floor import parse_floor
from ..route import Route, empty_reason

if TYPE_CHECKING:
    from ..store import TaskStore


#: Reference value: the hybrid floor of the demo (Flan) store, calibrated on its validation sets
#: only (``scripts/floor_study.py``, ``results/floor/``): the largest floor that keeps 99% of the
#: cross-validated queries whose task is indexed routed (it catches 60% of generic chat prompts,
#: 0.2% of test_dev). `floor.calibrate_floor` computes it per store (0.21 again for the
#: demo store, which records it); routers use the recorded value (``floor="auto"``), not this one.
CALIBRATED_FLOOR = 0.21

#: The routers' default floor: ``"auto"`` = the floor recorded in the store for the router's
#: representation (none if none is recorded); None = no floor; a number = that floor.
DEFAULT_FLOOR: float | str | None = "auto"


class LoRAuterRouter(Router):
    """Top-K tasks by similarity, softmax(sim/tau) weights, tasks mapped to adapters.

    ``representation="hybrid"`` (default, strategy ``lorauter``) uses our improved task vectors;
    ``representation="paper"`` (strategy ``lorauter-paper``) is the paper's mean sentence embedding.
    ``floor``: ``"auto"`` (`DEFAULT_FLOOR`) the floor recorded in the store (`TaskStore.recorded_floor`),
    None (or ``"none"``/``"off"``) no floor, or a similarity.
    """

    def __init__(
        self,
        store: TaskStore,
        task_to_adapter: Mapping[str, str] | None = None,
        *,
        k: int = 3,
        tau: float = 0.2,
        floor: float | str | None = DEFAULT_FLOOR,
        representation: str = "hybrid",
        below_floor: str = "base",
        damping: float = 0.5,
    ):
        if below_floor not in ("base", "damped"):
            raise InvalidInputError(f"below_floor must be 'base' or 'damped', not {below_floor!r}")
        if not 0.0 <= damping <= 1.0:
            raise InvalidInputError(f"damping must be in [0, 1], not {damping}")
        self.store, self.task_to_adapter = store, task_to_adapter
        self.k, self.tau, self.floor, self.representation = k, tau, parse_floor(floor), representation
        self.below_floor, self.damping = below_floor, damping
        self.strategy = "lorauter" if representation == "hybrid" else f"lorauter-{representation}"

    def floor_in_force(self) -> float | None:
        """The floor this router compares with now: its own, or (``"auto"``) the one recorded in the
        store for its representation (None: no floor)."""
        if self.floor != "auto":
            return self.floor
        recorded = getattr(self.store, "recorded_floor", None)
        cal = recorded(self.representation) if recorded is not None else None
        return None if cal is None else float(cal.floor)

    def _route_batch(self, texts, *, exclude, known):
        floor = self.floor_in_force()
        sw = Stopwatch(len(texts))
        dense = self.store.encode(texts)
        feats = self.store.featurize(self.representation, texts, dense)
        sw.lap("encode")
        ranked = self.store.nearest_tasks(self.representation, feats, self.k, exclude=exclude)
        sw.lap("query")
        routes = []
        for top in ranked:
            tasks = [t for t, _ in top]
            sims = [s for _, s in top]
            below = bool(top) and floor is not None and sims[0] < floor
            if not top or (below and self.below_floor == "base"):
                adapters, weights = [], []
                reason = "below_floor" if below else "no_match"
            else:
                adapters, weights = merge_by_adapter(tasks, softmax(sims, self.tau), self.task_to_adapter)
                reason = empty_reason(tasks, adapters)
                if below and adapters:  # damped: the mixture at reduced strength, the rest is the base model
                    weights = [w * self.damping for w in weights]
                    reason = "below_floor_damped"
            routes.append((tasks, sims, adapters, weights, reason))
        sw.lap("weights")
        timings = sw.result()
        return [Route(strategy=self.strategy, tasks=t, similarities=s, adapters=a, weights=w,
                      fallback=r is not None, fallback_reason=r, timings_ms=timings) for t, s, a, w, r in routes]
