"""Does the similarity floor help on prompts no task covers? (issue 15)

Routes the 40 generic chat prompts of ``floor_study.py`` (factual questions, writing, code, agent
planning steps: none is a Flan task) with the 48-adapter pool three ways -- ``lorauter`` without a
floor, with the calibrated floor falling back to the base model, and with the floor falling back
to the damped mixture -- and generates greedy chat answers (64 new tokens). Measured:

* factual prompts with one checkable answer (``REFERENCES``): share whose answer contains it;
* every prompt: empty answers, and *short* answers (at most three words, or a bare classification
  label such as "positive" / "yes"): what a format-teaching adapter can do to a chat reply.

"Short" is a proxy (no reference answers exist for open-ended prompts) that also counts short
correct answers ("Paris"); every answer is written to the JSON so a reader can judge.

    .venv/bin/python scripts/floor_generic.py --out results/floor/generic.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

REFERENCES = {
    "What is the capital of France?": ["paris"],
    "Who wrote Pride and Prejudice?": ["austen"],
    "How many legs does a spider have?": ["eight", "8"],
    "What is 17 times 23?": ["391"],
    "Convert 100 degrees Fahrenheit to Celsius.": ["37.7", "37.8"],
    "What year did the Second World War end?": ["1945"],
    "List the planets of the solar system in order.": ["mercury"],
    "Translate 'good morning' into Japanese.": ["ohayo", "おはよう"],
    "What is the time complexity of binary search?": ["log"],
    "Who painted the Mona Lisa?": ["leonardo", "vinci"],
    "What does the acronym NASA stand for?": ["aeronautics"],
    "How tall is Mount Everest?": ["8,848", "8848", "8,849", "8849", "29,0", "29029", "29,032", "29032"],
    "Why is the sky blue?": ["scatter"],
}
LABELS = {"positive", "negative", "yes", "no", "true", "false", "entailment", "neutral", "contradiction",
          "it is not possible to tell", "not_entailment", "a", "b", "c", "d"}


def collapsed(answer: str) -> bool:
    text = answer.strip().strip(".!").lower()
    return len(text.split()) <= 3 or text in LABELS


def generic_prompts() -> list[str]:
    path = Path(__file__).with_name("floor_study.py")
    spec = importlib.util.spec_from_file_location("floor_study", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["floor_study"] = mod
    spec.loader.exec_module(mod)
    return list(mod.GENERIC)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=Path, default=Path("data/pools/flan48"))
    ap.add_argument("--floor", type=float, default=None, help="Default: the calibrated floor.")
    ap.add_argument("--damping", type=float, default=0.5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("results/floor/generic.json"))
    args = ap.parse_args()

    from lorauter_integrations.adapters.pool import AdapterPool
    from lorauter_integrations.demo import demo_store
    from lorauter_integrations.engine import RoutedModel
    from lorauter_integrations.routing import build_router
    from lorauter_integrations.routing.lorauter import CALIBRATED_FLOOR

    floor = CALIBRATED_FLOOR if args.floor is None else args.floor
    engine = RoutedModel(pool=AdapterPool.from_dir(args.pool), store=demo_store())
    t2a = engine.pool.task_to_adapter
    settings = {
        "no floor": {},
        f"floor {floor} -> base": {"floor": floor},
        f"floor {floor} -> damped {args.damping}": {"floor": floor, "below_floor": "damped", "damping": args.damping},
    }
    prompts = generic_prompts()
    routes = {name: [build_router("lorauter", engine.routers.store, t2a, **cfg).route(p) for p in prompts]
              for name, cfg in settings.items()}
    routes["base model"] = [engine.route(p, strategy="base") for p in prompts]
    jobs: dict[tuple[int, tuple], object] = {}
    for rs in routes.values():
        for i, r in enumerate(rs):
            jobs.setdefault((i, r.key()), r)
    keys = list(jobs)
    gens = engine.generate([[{"role": "user", "content": prompts[i]}] for i, _ in keys], [jobs[k] for k in keys],
                           max_new_tokens=args.max_new_tokens, temperature=0.0)
    answer = {k: g.text for k, g in zip(keys, gens)}

    summary, rows = {}, []
    for name, rs in routes.items():
        ans = [answer[(i, r.key())] for i, r in enumerate(rs)]
        fact = [any(ref in a.lower() for ref in REFERENCES[p]) for p, a in zip(prompts, ans) if p in REFERENCES]
        summary[name] = {
            "fell_back": sum(r.fallback for r in rs),
            "factual_correct": sum(fact), "factual_n": len(fact),
            "empty": sum(not a.strip() for a in ans),
            "short": sum(collapsed(a) for a in ans), "n": len(ans),
        }
    for i, p in enumerate(prompts):
        rows.append({"prompt": p, "top_task": routes["no floor"][i].tasks[:1],
                     "top_similarity": round(routes["no floor"][i].similarities[0], 3),
                     "answers": {name: answer[(i, rs[i].key())] for name, rs in routes.items()}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"floor": floor, "damping": args.damping, "summary": summary,
                                    "generations": len(keys), "prompts": rows}, indent=1, ensure_ascii=False))
    lines = ["| setting | fell back | factual answers correct | empty answers | short answers (<= 3 words) |",
             "|---|---:|---:|---:|---:|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['fell_back']}/{s['n']} | {s['factual_correct']}/{s['factual_n']} "
                     f"| {s['empty']}/{s['n']} | {s['short']}/{s['n']} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
