"""Train the demo adapter pool (same as `lorauter train-adapters`).

    python examples/train_adapters.py --validation data/flan/validation.jsonl \
        --tasks sst2,rte --out lorauter_integrations/_adapters/flan --epochs 3

Re-running resumes: adapters already complete in --out are skipped.
"""

from __future__ import annotations

import argparse

from lorauter_integrations.training import LoraTrainingConfig, train_adapters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", required=True, help="JSONL validation sets (task, inputs, targets).")
    parser.add_argument("--tasks", default=None, help="Comma-separated task ids (default: all).")
    parser.add_argument("--out", required=True, help="Pool folder (one sub-folder per adapter + adapters.json).")
    parser.add_argument("--epochs", type=int, default=LoraTrainingConfig().epochs)
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    for report in train_adapters(args.validation, tasks, args.out, LoraTrainingConfig(epochs=args.epochs)):
        state = "skipped (complete)" if report.skipped else (
            f"{report.steps} steps, loss {report.first_loss:.3f} -> {report.last_epoch_loss:.3f}, {report.seconds:.0f}s")
        print(f"{report.adapter_id}: {state}", flush=True)


if __name__ == "__main__":
    main()
