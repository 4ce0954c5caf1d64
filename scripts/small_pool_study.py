"""Small pools: how much weight the default top-k mixture puts on irrelevant tasks (issue 14).

For stores of 2, 3 and 5 Flan tasks (indexed from their validation sets), route every held-out
query of those tasks (test_dev) with several k / tau and report the task top-1 accuracy and the
mean weight the route gives to tasks other than the query's own.

    python scripts/small_pool_study.py
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from lorauter_integrations.data import bundled_data_dir, load_tasks, read_jsonl  # noqa: E402
from lorauter_integrations.routing import build_router  # noqa: E402
from lorauter_integrations.store import TaskStore  # noqa: E402

POOLS = {
    2: ["sst2", "wmt16_translate_deen"],
    3: ["sst2", "wmt16_translate_deen", "arc_easy"],
    5: ["sst2", "wmt16_translate_deen", "arc_easy", "snli", "common_gen"],
}
SETTINGS = [(3, 0.2), (2, 0.2), (1, 0.2), (3, 0.1), (3, 0.05)]


def main() -> None:
    tasks = {t.task: t for t in load_tasks(bundled_data_dir() / "validation.jsonl")}
    queries = read_jsonl(bundled_data_dir() / "test_dev.jsonl")
    print("| tasks in store | k | tau | task top-1 | mean weight on other tasks | queries with >10% elsewhere |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, names in POOLS.items():
        with tempfile.TemporaryDirectory() as d:
            store = TaskStore(d)
            store.index([tasks[t] for t in names], progress=False)
            qs = [q for q in queries if q.task in names]
            t2a = {t: t for t in names}
            for k, tau in SETTINGS:
                router = build_router("lorauter", store, t2a, k=k, tau=tau)
                routes = router.route_many([q.inputs for q in qs])
                top1 = sum(r.tasks[0] == q.task for r, q in zip(routes, qs)) / len(qs)
                other = [sum(w for t, w in zip(r.adapters, r.weights) if t != q.task) for r, q in zip(routes, qs)]
                print(f"| {n} | {k} | {tau} | {top1:.3f} | {sum(other) / len(other):.3f} | "
                      f"{sum(o > 0.1 for o in other) / len(other):.3f} |")
            store.close() if hasattr(store, "close") else None


if __name__ == "__main__":
    main()
