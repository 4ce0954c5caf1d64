"""Quick engine benchmark on the demo model and its bundled pool (one process, ratios in one run).

    HF_HUB_OFFLINE=1 nice .venv/bin/python scripts/bench_engine.py [--tokens 32] [--repeats 3] [--peft] [--pool DIR]
        [--threads 1 --clock cpu]   # on a shared, loaded machine
        [--no-prepack]              # plain nn.Linear layers instead of oneDNN-packed weights (CPU)

Measures, batch 1, greedy, exactly ``--tokens`` new tokens (EOS ignored so every mode decodes the
same number of tokens): tokens/s of the base model, one adapter (merged), a 3-adapter mixture
merged into the weights and unmerged (forward hooks); composition activation times (cold mixture,
cached, merge + restore) against naive PEFT ``add_weighted_adapter`` + ``set_adapter`` +
``delete_adapter``; and a batch of 8 prompts with 8 different routes in one pass against the same
8 run one by one with switching. ``--peft`` adds naive PEFT generation (1 and 3 active adapters).
Prints a table on stderr and one JSON object on stdout.

On a shared, loaded machine, wall-clock times with 2 OpenMP threads are dominated by spin-waits
at every parallel region (a decode step of this model has hundreds); ``--threads 1 --clock cpu``
measures this process's own CPU time instead, which keeps the ratios meaningful.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

from lorauter_integrations.data import bundled_data_dir, read_jsonl
from lorauter_integrations.demo import DEMO_POOL_DIR
from lorauter_integrations.engine import RoutedModel
from lorauter_integrations.adapters.pool import AdapterPool
from lorauter_integrations.route import Route


_clock = time.perf_counter


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = _clock()
        fn()
        times.append(_clock() - t0)
    return statistics.median(times)


def _route(adapters, weights) -> Route:
    return Route(strategy="bench", adapters=list(adapters), weights=list(weights))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peft", action="store_true", help="also time naive PEFT generation")
    ap.add_argument("--pool", default=None, help="adapter pool dir (default: the bundled demo pool)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-prepack", action="store_true",
                    help="plain nn.Linear layers (the engine packs CPU weights for oneDNN by default)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (robust to other load on a shared machine; "
                         "use with --threads 1, where OpenMP spin-waits do not count)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731



    pool = AdapterPool.from_dir(args.pool or DEMO_POOL_DIR)
    engine = RoutedModel("demo", pool=pool, prepack=False if args.no_prepack else None)
    engine.eos_token_ids = frozenset()  # decode exactly --tokens tokens in every mode
    ids = pool.ids
    if len(ids) < 3:
        raise SystemExit(f"need at least 3 adapters in the bundled pool, found {ids}")
    log(f"torch threads={torch.get_num_threads()} clock={args.clock} adapters={len(ids)} "
        f"packed linears={engine.composer.packed is not None}")
    examples = read_jsonl(bundled_data_dir() / "test_dev.jsonl")
    prompts = [e.inputs for e in examples[::97][:8]]
    prompt = prompts[0]
    one = _route(ids[:1], [1.0])
    mix = _route(ids[:3], [0.5, 0.3, 0.2])
    base = Route(strategy="base", fallback=True)
    n = args.tokens
    res: dict[str, float] = {}

    def gen(route, merge=True):
        engine.merge = merge
        [g] = engine.generate([prompt], [route], max_new_tokens=n)
        assert g.completion_tokens == n

    modes = [("base", base, True), ("one_adapter", one, True),
             ("mixture_merged", mix, True), ("mixture_unmerged", mix, False)]
    for _, route, merge in modes:  # warm-up (and adapters loaded, compositions cached)
        gen(route, merge)
    # Round-robin over the modes, so that load changes on a shared machine hit every mode alike.
    times: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    for _ in range(args.repeats):
        for name, route, merge in modes:
            t0 = _clock()
            gen(route, merge)
            times[name].append(_clock() - t0)
    for name, _, _ in modes:
        res[f"tok_s_{name}"] = n / statistics.median(times[name])
        log(f"{name:>18}: {res[f'tok_s_{name}']:.2f} tok/s")
    engine.merge = True
    res["merged_vs_base"] = res["tok_s_mixture_merged"] / res["tok_s_base"]
    res["mixture_vs_base"] = res["tok_s_mixture_unmerged"] / res["tok_s_base"]
    res["one_adapter_vs_base"] = res["tok_s_one_adapter"] / res["tok_s_base"]

    # ---- activation (adapters resident; composition cache cleared for "cold")
    composer = engine.composer
    for a in ids[:3]:
        pool.weights(a)
    cold, cached, merge_restore = [], [], []
    for i in range(20):
        r = _route(ids[:3], [0.5, 0.3 - i * 1e-3, 0.2 + i * 1e-3])  # a new key each time
        t0 = _clock()
        comp = composer.composition(r)
        composer.activate(comp).restore()
        cold.append(_clock() - t0)
        t0 = _clock()
        comp = composer.composition(r)
        act = composer.activate(comp)
        cached.append(_clock() - t0)
        act.restore()
        t0 = _clock()
        composer.activate(comp, merge=True).restore()
        merge_restore.append(_clock() - t0)
    res["cold_mixture_ms"] = 1e3 * statistics.median(cold)
    res["cached_activation_ms"] = 1e3 * statistics.median(cached)
    res["merge_restore_ms"] = 1e3 * statistics.median(merge_restore)

    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(copy.deepcopy(engine.model), str(pool.record(ids[0]).path), adapter_name=ids[0])
    for a in ids[1:3]:
        peft_model.load_adapter(str(pool.record(a).path), adapter_name=a)
    naive = []
    for i in range(5):
        t0 = _clock()
        peft_model.add_weighted_adapter(ids[:3], [0.5, 0.3, 0.2], f"m{i}", combination_type="cat")
        peft_model.set_adapter(f"m{i}")
        peft_model.delete_adapter(f"m{i}")
        naive.append(_clock() - t0)
    res["naive_merge_ms"] = 1e3 * statistics.median(naive)
    log(f"activation: cold mixture {res['cold_mixture_ms']:.2f} ms, cached {res['cached_activation_ms']:.3f} ms, "
        f"merge+restore {res['merge_restore_ms']:.2f} ms, naive PEFT cat {res['naive_merge_ms']:.1f} ms")

    if args.peft:
        tok = engine.tokenizer
        enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)

        def peft_gen():
            with torch.inference_mode():
                peft_model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        for name, active in [("peft_one_adapter", ids[:1]), ("peft_three_adapters", ids[:3])]:
            peft_model.base_model.set_adapter(list(active))
            peft_gen()
            res[f"tok_s_{name}"] = n / _median_time(peft_gen, args.repeats)
            log(f"{name:>18}: {res[f'tok_s_{name}']:.2f} tok/s")
    del peft_model

    # ---- mixed batch: 8 prompts, 8 routes
    routes = []
    for i in range(8):
        w = torch.softmax(torch.tensor([1.0 + i % 3, 1.0 + (i // 3), 0.5 + i / 8]), 0).tolist()
        routes.append(_route(ids[:3], w))
    assert len({r.key() for r in routes}) == 8

    def batched():
        return engine.generate(prompts, routes, max_new_tokens=n)

    def sequential():
        return [engine.generate([p], [r], max_new_tokens=n)[0] for p, r in zip(prompts, routes)]

    same = [g.text for g in batched()] == [g.text for g in sequential()]
    t_b, t_s = [], []
    for _ in range(max(1, args.repeats - 1)):
        t_b.append(_median_time(batched, 1))
        t_s.append(_median_time(sequential, 1))
    t_batch, t_seq = statistics.median(t_b), statistics.median(t_s)
    res["mixed_batch_s"] = t_batch
    res["sequential_s"] = t_seq
    res["mixed_batch_speedup"] = t_seq / t_batch
    res["mixed_batch_equals_sequential"] = same
    log(f"mixed batch of 8: {t_batch:.2f} s vs sequential {t_seq:.2f} s -> {res['mixed_batch_speedup']:.2f}x "
        f"(identical outputs: {same})")
    log(f"merged/base {res['merged_vs_base']:.3f}  mixture/base {res['mixture_vs_base']:.3f}  "
        f"one/base {res['one_adapter_vs_base']:.3f}")
    res["clock"], res["threads"], res["tokens"] = args.clock, torch.get_num_threads(), n
    res["packed_linears"] = engine.composer.packed is not None
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
