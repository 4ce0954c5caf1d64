"""Per-adapter table of a pool (issue 15): each task's own adapter vs the base model on ALL its
test_dev queries, plus a "format or task?" reading of the answers.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python scripts/pool48_per_adapter.py \
        --pool data/pools/flan48 --out results/pool48 --cache /tmp/e2e48_cache.json

Writes ``per_adapter.json`` (the full `E2EReport` with every answer) and ``per_adapter.md``.
Extra columns, computed from the answers (nothing tuned on test_dev):

- ``wf``: well-formed share -- the answer (EM-normalised) is one of the task's validation targets;
  only for tasks with a closed label set (at most 10 distinct validation targets).
- ``prior``: the score of always answering the most frequent validation target (majority class):
  an adapter at ``prior`` with ``wf`` ~1 learned the answer format and the label prior, not the task.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path


def _imports():
    try:  # layout after the restructure
        from lorauter_integrations.adapters.pool import AdapterPool
        from lorauter_integrations.engine.local import RoutedModel
        from lorauter_integrations.lab.evaluation import e2e
        from lorauter_integrations.lab.evaluation.metrics import normalize_answer, task_score
    except ImportError:
        from lorauter_integrations.engine import RoutedModel
        from lorauter_integrations.evaluation import e2e
        from lorauter_integrations.evaluation.metrics import normalize_answer, task_score
        from lorauter_integrations.pool import AdapterPool
    return AdapterPool, RoutedModel, e2e, normalize_answer, task_score


def format_columns(report_json: dict, validation: Path, test: Path, normalize_answer, task_score) -> dict:
    val = defaultdict(list)
    for line in validation.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        val[d["task"]].append(d["targets"])
    refs = defaultdict(list)
    metric = {}
    for line in test.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        refs[d["task"]].append(d["targets"])
        metric[d["task"]] = d["metric"]
    res = next(r for r in report_json["results"] if not r["ood"])
    answers = defaultdict(lambda: defaultdict(list))
    for s in res["samples"]:
        answers[s["task"]][s["strategy"]].append(s["answer"])
    out = {}
    for task, targets in val.items():
        labels = {normalize_answer(t) for t in targets}
        closed = len(set(targets)) <= 10
        n = len(answers[task]["base"])
        majority = Counter(targets).most_common(1)[0][0]
        r25 = refs[task][:25]  # the prior is the task's (first 25 queries), whichever queries were scored
        row = {"closed_label_set": closed, "majority_answer": majority,
               "prior": round(task_score(metric[task], [majority] * len(r25), r25), 2)}
        for strat in ("base", "oracle"):
            ans = answers[task][strat]
            row[f"wf_{strat}"] = (round(sum(normalize_answer(a) in labels for a in ans) / len(ans), 3)
                                  if closed and ans else None)
            if ans:
                norm = [normalize_answer(a) for a in ans]
                row[f"distinct_{strat}"] = len(set(norm))
                # share of the answers that are the single most frequent answer (1.0: one answer for every query)
                row[f"top_share_{strat}"] = round(Counter(norm).most_common(1)[0][1] / len(norm), 3)
        out[task] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="data/pools/flan48")
    ap.add_argument("--validation", default="data/flan/validation.jsonl")
    ap.add_argument("--test", default="data/flan/test_dev.jsonl")
    ap.add_argument("--out", default="results/pool48")
    ap.add_argument("--cache", default="/tmp/e2e48_cache.json")
    ap.add_argument("--limit-per-task", type=int, default=25)
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--cache-only", action="store_true",
                    help="Score only the queries whose base and adapter answers are both in the cache(s) (no generation).")
    ap.add_argument("--merge-caches", default=None, help="Comma-separated cache files merged into --cache first.")
    ap.add_argument("--recipe", default="LoRA r=8/alpha 16 on q_proj/v_proj, 3 epochs, AdamW 1.5e-3, batch 2")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    AdapterPool, RoutedModel, e2e, normalize_answer, task_score = _imports()
    pool = AdapterPool.from_dir(args.pool)
    engine = RoutedModel(pool=pool)
    tasks = args.tasks.split(",") if args.tasks else sorted(t for t, a in pool.task_to_adapter.items() if t == a)
    test_input = args.test
    if args.merge_caches:
        merged = json.loads(Path(args.cache).read_text()) if Path(args.cache).exists() else {}
        for extra in args.merge_caches.split(","):
            merged.update(json.loads(Path(extra).read_text()))
        Path(args.cache).write_text(json.dumps(merged, ensure_ascii=False))
    if args.cache_only:
        import hashlib

        from lorauter_integrations.data import read_jsonl

        cached = json.loads(Path(args.cache).read_text())
        budget = {"em": 24, "rouge": 64, "bleu": 80}

        def have(q, route_key):
            raw = json.dumps([engine.model_name, q.inputs, route_key, budget[q.metric]], ensure_ascii=False)
            return hashlib.sha256(raw.encode("utf-8")).hexdigest() in cached

        chosen = e2e.select_queries(read_jsonl(args.test), tasks, args.limit_per_task)
        test_input = [q for q in chosen if have(q, []) and have(q, [[pool.task_to_adapter[q.task], 1.0]])]
        tasks = sorted({q.task for q in test_input})
    t0 = time.perf_counter()
    report = e2e.evaluate_e2e(engine, test_input, strategies=["base", "oracle"], ood_modes=(False,), tasks=tasks,
                              limit_per_task=args.limit_per_task, cache=args.cache)
    wall = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = report.model_dump()
    cols = format_columns(data, Path(args.validation), Path(args.test), normalize_answer, task_score)
    data["format_columns"] = cols
    data["wall_seconds"] = round(wall, 1)
    ci = paired = None
    try:  # bootstrap intervals (new layout only): items rebuilt from the samples, in query order
        from lorauter_integrations.data import read_jsonl
        from lorauter_integrations.lab.evaluation.e2e import bootstrap_intervals, select_queries

        queries = select_queries(test_input if isinstance(test_input, list) else read_jsonl(args.test), tasks,
                                 args.limit_per_task)
        items: dict = defaultdict(lambda: defaultdict(list))
        per_strategy = defaultdict(list)
        for smp in report.results[0].samples:
            per_strategy[smp["strategy"]].append(smp)
        for strat, smps in per_strategy.items():
            for q, smp in zip(queries, smps, strict=True):
                assert smp["task"] == q.task
                items[q.task][strat].append((smp["answer"], q.targets))
        ci, paired = bootstrap_intervals(items, {q.task: q.metric for q in queries}, ["base", "oracle"],
                                         [("oracle", "base")], resamples=1000)
        data["ci95"] = ci
        data["paired"] = [p_.model_dump() for p_ in paired]
    except ImportError:
        pass
    (out / "per_adapter.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    res = report.results[0]
    lines = [
        f"# Per-adapter table: `{args.pool}`, each adapter on its own task vs the base model", "",
        f"Model `{report.model}` (fp32, CPU), greedy decoding, the first {args.limit_per_task} test_dev queries of "
        f"each of {len(res.tasks)} tasks ({sum(t.n for t in res.tasks)} queries; adapters trained on the 20 "
        f"validation examples of their task only: {args.recipe}). {report.generations} generations, "
        f"{wall:.0f} s wall (answers cached in `{args.cache}` are not regenerated).", "",
        *([f"**Only the queries whose base and adapter answers were both generated in this session's CPU budget "
           f"are scored (column n < 25 marks a partial task).**", ""] if args.cache_only else []),
        "`wf` = share of answers that are one of the task's validation targets (closed label sets only); "
        "`top-answer share` = share of the adapter's answers equal to its most frequent answer (1.00: the same answer "
        "to every query); `prior` = score of always giving the most frequent validation target (majority class).", "",
        "| adapter (= task) | domain | metric | n | base | adapter | delta | wf base | wf adapter | top-answer share (adapter) | prior |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for t in sorted(res.tasks, key=lambda t: (t.domain or "", t.task)):
        b, o, c = t.scores["base"], t.scores["oracle"], cols[t.task]
        lines.append(f"| {t.task} | {t.domain} | {t.metric} | {t.n} | {b:.1f} | {o:.1f} | {o - b:+.1f} | "
                     f"{fmt(c['wf_base'])} | {fmt(c['wf_oracle'])} | {fmt(c.get('top_share_oracle'))} | {c['prior']:.1f} |")
    b, o = res.mean["base"], res.mean["oracle"]
    prior = sum(cols[t.task]["prior"] for t in res.tasks) / len(res.tasks)
    lines.append(f"| **mean** | | | | **{b:.1f}** | **{o:.1f}** | **{o - b:+.1f}** | | | | **{prior:.1f}** |")
    if ci:
        d = paired[0]
        lines += ["", f"Bootstrap 95% intervals (queries resampled inside each task, 1,000 resamples): base "
                  f"{ci['base'][0]:.1f}-{ci['base'][1]:.1f}, adapter {ci['oracle'][0]:.1f}-{ci['oracle'][1]:.1f}; "
                  f"paired adapter - base {d.diff:+.2f} points ({d.ci95[0]:+.2f} .. {d.ci95[1]:+.2f})."]
    (out / "per_adapter.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
