"""Routing quality: how often the router's top task is the query's task (or its domain).

Figures: ``task_top1``, ``domain_top1`` (domain of the top task), ``task_recall_at_k`` (own task
among the route's tasks). With ``ood=True`` each query's own task is removed from the
candidates (unseen-task setting), so only the domain figure is meaningful.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel
from tqdm.auto import tqdm

from ...data import Example, load_tasks, read_jsonl
from ...routing import build_router
from ...store import TaskStore

ROUTING_STRATEGIES = ("lorauter", "lorauter-paper", "retriever", "examples", "uniform", "oracle", "base")


class RoutingResult(BaseModel):
    strategy: str
    ood: bool
    n: int
    task_top1: float
    domain_top1: float
    task_recall_at_k: float


def evaluate_routing(
    store: TaskStore,
    queries: Sequence[Example],
    *,
    strategy: str = "lorauter",
    ood: bool = False,
    k: int = 3,
    batch_size: int = 256,
    progress: bool = True,
    **router_cfg,
) -> RoutingResult:
    """Route every query and score the route against the query's known task and domain."""
    router = build_router(strategy, store, None, k=k, **router_cfg)
    domain_of = store.domains()
    hit_task = hit_domain = hit_k = 0
    bar = tqdm(total=len(queries), desc=f"routing ({strategy}{', ood' if ood else ''})",
               unit="q", disable=not progress)
    for s in range(0, len(queries), batch_size):
        chunk = queries[s:s + batch_size]
        routes = router.route_many(
            [q.inputs for q in chunk],
            exclude_tasks=[{q.task} if ood else () for q in chunk],
            known_tasks=[q.task for q in chunk],
        )
        for q, r in zip(chunk, routes):
            top = r.tasks[0] if r.tasks else None
            hit_task += top == q.task
            hit_domain += top is not None and domain_of.get(top) == q.domain
            hit_k += q.task in r.tasks[:k]
        bar.update(len(chunk))
    bar.close()
    n = max(1, len(queries))
    return RoutingResult(strategy=strategy, ood=ood, n=len(queries), task_top1=hit_task / n,
                         domain_top1=hit_domain / n, task_recall_at_k=hit_k / n)


def evaluate_routing_files(
    validation: str | Path,
    test: str | Path,
    *,
    strategies: Sequence[str] = ("lorauter",),
    ood_modes: Sequence[bool] = (False,),
    k: int = 3,
    progress: bool = True,
    **router_cfg,
) -> list[RoutingResult]:
    """Build a temporary store from ``validation`` and evaluate each strategy on ``test``."""
    tasks = load_tasks(validation)
    queries = read_jsonl(test)
    with tempfile.TemporaryDirectory(prefix="lorauter-eval-") as tmp:
        store = TaskStore(tmp)
        store.index(tasks, progress=progress)
        return [
            evaluate_routing(store, queries, strategy=s, ood=o, k=k, progress=progress, **router_cfg)
            for s in strategies for o in ood_modes
        ]


def results_table(results: Sequence[RoutingResult]) -> str:
    """A Markdown table of routing results."""
    lines = ["| strategy | setting | n | task top-1 | domain top-1 | task recall@k |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.strategy} | {'unseen task (OOD)' if r.ood else 'in-distribution'} | {r.n} | "
                     f"{r.task_top1:.3f} | {r.domain_top1:.3f} | {r.task_recall_at_k:.3f} |")
    return "\n".join(lines)
