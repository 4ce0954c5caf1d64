"""Task -> adapter mapping by likelihood against mapping by the task's metric, on the demo pool.

    HF_HUB_OFFLINE=1 nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python scripts/mapping_metric.py \
        [--tasks mnli_matched,mnli_mismatched,trivia_qa,drop,natural_questions,wmt14_enfr] \
        [--start-examples 2 --max-examples 8 --keep 0.5 --metric-from-round 1] [--heldout 8] \
        [--out results/mapping_metric/mapping_metric]

Maps the named tasks of the bundled validation sets to the bundled 16-adapter pool twice, with the
same successive-halving schedule: ranked by target likelihood in every round, and ranked by the
task's metric on greedy answers from ``--metric-from-round`` on (the likelihood still prunes the
rounds before). The manifest is never written (dry run). Then each task's two winners answer the
next ``--heldout`` validation examples (those after the ones mapping saw; validation data only,
never test queries) and are scored with the task's metric, so the two maps are compared on
examples neither criterion chose on. Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.data import load_tasks
from lorauter_integrations.demo import DEMO_POOL_DIR
from lorauter_integrations.engine.models import DEMO_MODEL, load_base_model
from lorauter_integrations.lab.evaluation.metrics import task_score
from lorauter_integrations.lab.mapping import AdapterScorer, HalvingConfig, map_adapters

TASKS = "mnli_matched,mnli_mismatched,trivia_qa,drop,natural_questions,wmt14_enfr"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--start-examples", type=int, default=2)
    ap.add_argument("--max-examples", type=int, default=8)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--metric-from-round", type=int, default=1)
    ap.add_argument("--heldout", type=int, default=8, help="Validation examples after the mapped ones (0: none).")
    ap.add_argument("--out", default="results/mapping_metric/mapping_metric")
    args = ap.parse_args()

    validation = Path("data/flan/validation.jsonl")
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    task_sets = [t for t in load_tasks(validation) if t.task in set(names)]
    t0 = time.perf_counter()
    loaded = load_base_model(DEMO_MODEL)
    load_s = time.perf_counter() - t0
    runs = {}
    for criterion in ("likelihood", "metric"):
        config = HalvingConfig(start_examples=args.start_examples, max_examples=args.max_examples, keep=args.keep,
                               max_length=args.max_length, criterion=criterion,
                               metric_from_round=args.metric_from_round)
        print(f"[{criterion}] mapping {len(task_sets)} tasks ...", file=sys.stderr, flush=True)
        runs[criterion] = map_adapters(task_sets, DEMO_POOL_DIR, base_model=loaded, config=config, write=False,
                                       progress=True)
        print(f"[{criterion}] {runs[criterion].mapping} in {runs[criterion].seconds} s", file=sys.stderr, flush=True)

    heldout: dict[str, dict[str, float]] = {}
    heldout_generations = 0
    t_heldout = time.perf_counter()
    if args.heldout:
        scorer = AdapterScorer(loaded, AdapterPool.from_dir(DEMO_POOL_DIR), HalvingConfig())
        for task in task_sets:
            examples = task.examples[args.max_examples: args.max_examples + args.heldout]
            if not examples:
                continue
            refs = [e.targets or "" for e in examples]
            winners = sorted({runs[c].mapping[task.task] for c in runs})
            heldout[task.task] = {}
            for adapter in winners:
                answers = scorer.answers(adapter, examples)
                heldout_generations += len(examples)
                heldout[task.task][adapter] = round(task_score(examples[0].metric, answers, refs), 2)
            print(f"[held-out] {task.task}: {heldout[task.task]}", file=sys.stderr, flush=True)
    heldout_s = round(time.perf_counter() - t_heldout, 1)

    command = ("HF_HUB_OFFLINE=1 nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python scripts/mapping_metric.py "
               f"--tasks {','.join(names)} --start-examples {args.start_examples} --max-examples {args.max_examples} "
               f"--keep {args.keep} --max-length {args.max_length} --metric-from-round {args.metric_from_round} "
               f"--heldout {args.heldout} --out {args.out}")
    report = {
        "command": command,
        "model": loaded.base_model_id,
        "pool": str(DEMO_POOL_DIR),
        "validation": str(validation),
        "model_load_seconds": round(load_s, 1),
        "runs": {c: r.model_dump() for c, r in runs.items()},
        "heldout": {"examples_per_task": args.heldout, "first_example": args.max_examples,
                    "generations": heldout_generations, "seconds": heldout_s, "scores": heldout},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report, task_sets))
    print(out.with_suffix(".md").read_text())


def markdown(report: dict, task_sets) -> str:
    lik, met = report["runs"]["likelihood"], report["runs"]["metric"]
    by_task = {c: {t["task"]: t for t in r["tasks"]} for c, r in report["runs"].items()}
    metric_of = {t.task: t.examples[0].metric for t in task_sets}
    ho = report["heldout"]
    rounds = by_task["metric"][lik["tasks"][0]["task"]]
    lines = [
        "# Task -> adapter map: target likelihood against the task's metric",
        "",
        "    " + report["command"],
        "",
        f"Model {report['model']}, the bundled 16-adapter pool, validation examples only. Successive halving "
        f"with the same schedule for both criteria: rounds (adapters, examples) {rounds['rounds']}; "
        f"*likelihood* ranks every round by the mean log-probability per answer token of the reference "
        f"answers (teacher forcing); *metric* ranks the rounds marked {rounds['round_criteria']} by the task's "
        "metric (EM or BLEU, as `lorauter eval` scores them) on greedy answers generated with the adapter "
        "active, ties broken by likelihood. Each task saw its first "
        f"{max(n for _, n in rounds['rounds'])} validation examples.",
        "",
        f"Held-out: each task's winners then answered validation examples {ho['first_example']}.."
        f"{ho['first_example'] + ho['examples_per_task'] - 1} (not seen by either criterion) and were scored with "
        "the task metric (0-100).",
        "",
        "| task | metric | likelihood map | its score (log-prob/token) | metric map | its metric on the last round "
        "| its log-prob/token | held-out: likelihood map | held-out: metric map |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for task in by_task["likelihood"]:
        lt, mt = by_task["likelihood"][task], by_task["metric"][task]
        h = ho["scores"].get(task, {})
        lines.append(
            f"| {task} | {metric_of[task]} | {lt['adapter']} | {lt['score']:.3f} | {mt['adapter']} | "
            f"{mt['metric_score']:.1f} | {mt['score']:.3f} | {h.get(lt['adapter'], float('nan')):.1f} | "
            f"{h.get(mt['adapter'], float('nan')):.1f} |")
    lines += [
        "",
        "Last round of the metric criterion (each candidate: task metric / mean log-prob per token, best first):",
        "",
    ]
    for task, t in by_task["metric"].items():
        cells = ", ".join(f"{s['adapter']} {s['metric']:.1f} / {s['likelihood']:.3f}" for s in t["standings"])
        lines.append(f"- {task}: {cells}")
    lines += [
        "",
        "| criterion | likelihood passes (adapter x example) | greedy answers generated | wall time (s) |",
        "|---|---:|---:|---:|",
        f"| likelihood | {lik['evaluations']} (exhaustive: {lik['exhaustive_evaluations']}) | 0 | {lik['seconds']} |",
        f"| metric | {met['evaluations']} (exhaustive: {met['exhaustive_evaluations']}) | {met['generations']} | "
        f"{met['seconds']} |",
        f"| held-out check | 0 | {ho['generations']} | {ho['seconds']} |",
        "",
        f"Model load {report['model_load_seconds']} s. Wall times on a shared 2-core CPU running another "
        "evaluation at the same time (this run at nice 10, one thread): compare them with each other, not "
        "with other runs.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
