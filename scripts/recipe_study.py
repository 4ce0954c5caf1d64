"""Choose the adapter-training recipe on VALIDATION data only (issue 15).

For a handful of study tasks, the 20 validation examples of each task are split into K folds; for
every recipe of a small grid an adapter is trained on the other folds' examples and scored (the
task's own metric on greedy answers, the engine's prompt rendering) on the held-out fold. The base
model is scored on the same held-out examples. test_dev is never read.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python scripts/recipe_study.py --out results/pool48/recipe_study.json

Also reported per recipe: the share of held-out answers that are *well-formed* (an answer string
that occurs among the task's validation targets, for tasks with a closed label set) -- to tell
"learned the format" from "learned the task".
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path

RECIPES = {
    # name: LoraTrainingConfig overrides (the shipped demo pool = "r8_qv_e3")
    "r8_qv_e3": dict(r=8, alpha=16, target_modules=("q_proj", "v_proj"), epochs=3, learning_rate=1.5e-3),
    "r8_qv_e6": dict(r=8, alpha=16, target_modules=("q_proj", "v_proj"), epochs=6, learning_rate=1.5e-3),
    "r8_qv_e3_lr5e-4": dict(r=8, alpha=16, target_modules=("q_proj", "v_proj"), epochs=3, learning_rate=5e-4),
    "r16_all_e3_lr5e-4": dict(r=16, alpha=32, epochs=3, learning_rate=5e-4,
                              target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "r8_all_e5_lr1e-3": dict(r=8, alpha=16, epochs=5, learning_rate=1e-3,
                             target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
}
STUDY_TASKS = ("sentiment140", "copa", "snli", "arc_easy", "paws_wiki", "common_gen")


def generate(loaded, prompts, max_new_tokens):
    import torch

    from lorauter_integrations.training import render_prompt

    tok = loaded.tokenizer
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    texts = [render_prompt(tok, p) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = loaded.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
    return [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--validation", default="data/flan/validation.jsonl")
    ap.add_argument("--tasks", default=",".join(STUDY_TASKS))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--use-folds", type=int, default=None, help="Only the first N folds (cost).")
    ap.add_argument("--work", default="/tmp/recipe_study")
    ap.add_argument("--out", default="results/pool48/recipe_study.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from lorauter_integrations.data import TaskSet, load_tasks
    from lorauter_integrations.evaluation.metrics import max_new_tokens_for, score, task_score
    from lorauter_integrations.models import load_base_model
    from lorauter_integrations.training import LoraTrainingConfig, train_adapter

    tasks = {t.task: t for t in load_tasks(args.validation)}
    names = [t for t in args.tasks.split(",") if t]
    recipes = [r for r in args.recipes.split(",") if r]
    loaded = load_base_model("demo")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {"rows": []}
    done = {(r["recipe"], r["task"], r["fold"]) for r in results["rows"]}
    work = Path(args.work)
    start = time.perf_counter()
    for name in names:
        task = tasks[name]
        exs = task.examples
        labels = Counter(e.targets for e in exs)
        closed = len(labels) <= 10  # closed label set: "well-formed" is measurable
        budget = max_new_tokens_for(task.metric)
        for fold in range(args.use_folds or args.folds):
            held = [e for i, e in enumerate(exs) if i % args.folds == fold]
            train = [e for i, e in enumerate(exs) if i % args.folds != fold]
            for recipe in ["base"] + recipes:
                if (recipe, name, fold) in done:
                    continue
                t0 = time.perf_counter()
                info = {}
                if recipe == "base":
                    answers = generate(loaded, [e.inputs for e in held], budget)
                else:
                    cfg = LoraTrainingConfig(**RECIPES[recipe])
                    folder = work / recipe / f"{name}_f{fold}"
                    rep = train_adapter(loaded, TaskSet(task=name, domain=task.domain, metric=task.metric, examples=train),
                                        folder, cfg, progress=False)
                    info = {"first_loss": rep.first_loss, "last_epoch_loss": rep.last_epoch_loss, "train_s": rep.seconds}
                    from peft import PeftModel

                    peft_model = PeftModel.from_pretrained(loaded.model, folder)
                    base_ref = loaded.model
                    loaded.model = peft_model
                    try:
                        answers = generate(loaded, [e.inputs for e in held], budget)
                    finally:
                        loaded.model = peft_model.unload()
                        assert loaded.model is base_ref
                    shutil.rmtree(folder, ignore_errors=True)
                refs = [e.targets for e in held]
                row = {"recipe": recipe, "task": name, "fold": fold, "metric": task.metric, "n": len(held),
                       "score": task_score(task.metric, answers, refs),
                       "item_scores": [score(task.metric, a, r) for a, r in zip(answers, refs)],
                       "well_formed": (sum(a.strip().lower().rstrip(".") in {l.lower() for l in labels} for a in answers) / len(answers)) if closed else None,
                       "answers": answers, "seconds": round(time.perf_counter() - t0, 1), **info}
                results["rows"].append(row)
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
                print(f"{recipe:20s} {name:16s} f{fold} score {row['score']:6.1f} wf {row['well_formed']} "
                      f"{row['seconds']:.0f}s (total {time.perf_counter() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
