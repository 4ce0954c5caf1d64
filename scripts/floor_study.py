"""Similarity floor for prompts no indexed task covers (issue 15), calibrated on VALIDATION only.

The router's top-1 task similarity (the hybrid representation's cosine, what `LoRAuterRouter`
compares with its ``floor``) is measured, in memory, in two situations on the validation set:

- ``indexed``: 5-fold cross-validation inside each task -- the representation and the task
  vectors are fitted on four folds of every task, the fifth fold's examples are the queries: their
  own task IS indexed.
- ``not indexed``: leave-one-task-out -- fitted without the query's task at all (a task the
  router has never seen; near-duplicate sibling tasks such as anli_r1/r2 stay indexed).

The floor is chosen on these two distributions only: the largest threshold that keeps at least
``--keep`` (default 0.99) of the indexed queries routed (a floor must not cost in-distribution
quality), reported with the balanced-accuracy (Youden) optimum for reference. Then, for
confirmation only (nothing tuned on them): test_dev queries with the store fitted on all of the
validation set (in-distribution), test_dev queries of tasks left out of the fit, and generic chat
prompts (``GENERIC``, written for this study) -- the share that falls back under each floor.

    .venv/bin/python scripts/floor_study.py --out results/floor/floor_study.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

GENERIC = [
    "What is the capital of France?",
    "Who wrote Pride and Prejudice?",
    "How many legs does a spider have?",
    "Write a haiku about autumn leaves.",
    "Explain quantum entanglement to a ten-year-old.",
    "Give me three ideas for a birthday party for a seven-year-old.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "What is 17 times 23?",
    "Draft a polite email asking my landlord to fix the heating.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "What are the health benefits of green tea?",
    "Plan a three-day trip to Rome on a budget.",
    "How do I reverse a linked list in C?",
    "Tell me a joke about programmers.",
    "What's the difference between a virus and a bacterium?",
    "Recommend a good science fiction book.",
    "How does compound interest work?",
    "Thought: I need to find the user's order status. Which tool should I call next? Available tools: search_orders, get_weather, send_email.",
    "You are a planning agent. Break the goal 'set up a new laptop for a developer' into numbered steps.",
    "Given the previous observation 'file not found', decide the next action: retry, ask_user or abort.",
    "Convert 100 degrees Fahrenheit to Celsius.",
    "What year did the Second World War end?",
    "List the planets of the solar system in order.",
    "Write a short motivational message for a friend starting a new job.",
    "Why is the sky blue?",
    "What is the best way to learn a new language as an adult?",
    "Describe the water cycle.",
    "Suggest a name for a coffee shop that also sells books.",
    "How do I make a sourdough starter?",
    "Translate 'good morning' into Japanese.",
    "What is the time complexity of binary search?",
    "Can you help me write a cover letter for a data analyst position?",
    "Who painted the Mona Lisa?",
    "What should I pack for a weekend camping trip?",
    "Explain what a REST API is.",
    "Is it safe to eat raw cookie dough?",
    "Write a SQL query that counts orders per customer.",
    "What does the acronym NASA stand for?",
    "Give me a recipe for a quick vegetarian dinner.",
    "How tall is Mount Everest?",
]


def _study_module():
    path = Path(__file__).with_name("representation_study.py")
    spec = importlib.util.spec_from_file_location("representation_study", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["representation_study"] = mod
    spec.loader.exec_module(mod)
    return mod


def quantiles(x) -> dict[str, float]:
    x = np.asarray(x, dtype=float)
    return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in (1, 5, 10, 25, 50, 75, 90, 95, 99)} | {
        "mean": round(float(x.mean()), 4), "n": int(len(x))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--validation", type=Path, default=Path("data/flan/validation.jsonl"))
    ap.add_argument("--test", type=Path, default=Path("data/flan/test_dev.jsonl"))
    ap.add_argument("--encoder", default="all-MiniLM-L6-v2")
    ap.add_argument("--keep", type=float, default=0.99)
    ap.add_argument("--holdout-tasks", default="cb,wnli,drop,trivia_qa,stsb,wmt14_enfr,hellaswag,dart",
                    help="Tasks left out of the fit for the test_dev confirmation.")
    ap.add_argument("--out", type=Path, default=Path("results/floor/floor_study.json"))
    args = ap.parse_args()

    rs = _study_module()
    from lorauter_integrations.representations import HybridRepresentation

    val = rs.Split(args.validation, "validation", args.encoder)
    test = rs.Split(args.test, "test", args.encoder)
    task_domain = dict(zip(val.tasks, val.domains))

    # indexed: 5-fold CV inside tasks
    position = np.zeros(len(val.texts), dtype=int)
    seen: dict[str, int] = {}
    for i, t in enumerate(val.tasks):
        position[i] = seen.get(t, 0)
        seen[t] = position[i] + 1
    indexed, indexed_task = [], []
    for f in range(5):
        q = position % 5 == f
        _, sims = rs.fit_and_score(HybridRepresentation, val.subset(~q), val.subset(q))
        indexed.extend(sims.max(axis=1))
        indexed_task.extend(val.tasks[q])
    # not indexed: leave one task out
    loto, loto_task, loto_sibling = [], [], []
    for t in dict.fromkeys(val.tasks):
        own = val.tasks == t
        ids, sims = rs.fit_and_score(HybridRepresentation, val.subset(~own), val.subset(own))
        loto.extend(sims.max(axis=1))
        loto_task.extend([t] * int(own.sum()))
        loto_sibling.extend(task_domain[ids[j]] == task_domain[t] for j in sims.argmax(axis=1))
    indexed, loto = np.array(indexed), np.array(loto)

    # floors
    grid = np.round(np.arange(0.0, 1.0, 0.0025), 4)
    keep_ok = [f for f in grid if np.mean(indexed >= f) >= args.keep]
    floor_keep = float(max(keep_ok)) if keep_ok else 0.0
    youden = max(grid, key=lambda f: np.mean(indexed >= f) + np.mean(loto < f))

    # confirmation: test_dev in-distribution, held-out tasks, generic prompts
    ids, sims_id = rs.fit_and_score(HybridRepresentation, val.subset(), test.subset())
    top_id = sims_id.max(axis=1)
    hold = [t for t in args.holdout_tasks.split(",") if t]
    in_hold_val = np.isin(val.tasks, hold)
    in_hold_test = np.isin(test.tasks, hold)
    rep = HybridRepresentation().fit(*[x for x in val.subset(~in_hold_val)])
    feats = rep.featurize(*val.subset(~in_hold_val)[:2])
    tasks_kept = val.tasks[~in_hold_val]
    t_ids = np.array(list(dict.fromkeys(tasks_kept)))
    protos = np.vstack([rep.task_vectors(feats[tasks_kept == t]) for t in t_ids])
    texts_h, dense_h = test.subset(in_hold_test)[:2]
    top_hold = (rep.featurize(texts_h, dense_h) @ protos.T).max(axis=1)
    from lorauter_integrations.encoders import get_encoder

    g_dense = get_encoder(args.encoder).encode(GENERIC)
    rep_all = HybridRepresentation().fit(*val.subset())
    feats_all = rep_all.featurize(*val.subset()[:2])
    all_ids = np.array(list(dict.fromkeys(val.tasks)))
    protos_all = np.vstack([rep_all.task_vectors(feats_all[val.tasks == t]) for t in all_ids])
    g_sims = rep_all.featurize(GENERIC, g_dense) @ protos_all.T
    top_g = g_sims.max(axis=1)

    def rates(f):
        return {"floor": f,
                "val_indexed_fallback": round(float(np.mean(indexed < f)), 4),
                "val_not_indexed_fallback": round(float(np.mean(loto < f)), 4),
                "test_id_fallback": round(float(np.mean(top_id < f)), 4),
                "test_heldout_tasks_fallback": round(float(np.mean(top_hold < f)), 4),
                "generic_fallback": round(float(np.mean(top_g < f)), 4)}

    out = {
        "indexed_val_cv": quantiles(indexed), "not_indexed_val_loto": quantiles(loto),
        "test_id": quantiles(top_id), "test_heldout_tasks": quantiles(top_hold), "generic": quantiles(top_g),
        "floor_keep": floor_keep, "keep": args.keep, "floor_youden": float(youden),
        "rates": [rates(f) for f in sorted({floor_keep, float(youden), 0.1, 0.15, 0.2, 0.25, 0.3})],
        "loto_per_task": {t: {"median_top1": round(float(np.median(loto[np.array(loto_task) == t])), 4),
                              "fallback_at_floor": round(float(np.mean(loto[np.array(loto_task) == t] < floor_keep)), 3)}
                          for t in dict.fromkeys(loto_task)},
        "loto_same_domain_top1": round(float(np.mean(loto_sibling)), 4),
        "holdout_tasks": hold,
        "generic": [{"prompt": p, "top1_task": str(all_ids[g_sims[i].argmax()]), "top1_sim": round(float(top_g[i]), 4)}
                    for i, p in enumerate(GENERIC)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    for key in ("indexed_val_cv", "not_indexed_val_loto", "test_id", "test_heldout_tasks", "generic"):
        print(f"{key:22s} {out[key]}")
    print(f"floor (keep {args.keep} of indexed): {floor_keep}   youden: {youden}")
    for r in out["rates"]:
        print(r)


if __name__ == "__main__":
    main()
