"""vLLM scale-out figures: the `VLLMEngine` against a running vLLM server, the local engine beside it.

    make vllm-start                                   # prints the URL
    python -m lorauter_integrations.lab.bench_vllm --url http://127.0.0.1:PORT/v1 [--json out.json]

Sections (keys of the result):

- ``cold``: a composition the server has never seen (a K=3 exact mixture with fresh weights):
  compose + write the PEFT folder (``publish_ms``), then ``POST /v1/load_lora_adapter``
  (``load_ms``); medians over ``reps``.
- ``steady``: a routed request through `VLLMEngine.generate` (routing, composition name lookup,
  the HTTP request) against a plain ``/v1/completions`` request with the same token ids to the
  same preloaded adapter; exactly ``tokens`` new tokens each (``ignore_eos``: not in the engine,
  so the prompt is chosen to run to the limit), interleaved, medians; ``overhead`` is the ratio
  minus 1 (target <= 0.10).
- ``concurrent``: ``n`` held-out queries of different tasks, each routed on its own text, in one
  ``generate`` call: vLLM engine wall time vs the local `RoutedModel`'s (the same routes).

On a shared 2-core CPU the absolute times drift with other load: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _queries(n: int) -> list[str]:
    from ..data import bundled_data_dir

    seen: dict[str, str] = {}
    with open(bundled_data_dir() / "test_dev.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["task"] not in seen and len(rec["inputs"]) < 500:
                seen[rec["task"]] = rec["inputs"]
    return list(seen.values())[:n]


def bench_cold(engine, reps: int) -> dict[str, Any]:
    rng = random.Random()  # fresh weights each run: a composition no earlier run has published
    ids = engine.pool.ids
    publish, load = [], []
    for _ in range(reps):
        adapters = rng.sample(ids, 3)
        w = [rng.random() + 0.1 for _ in adapters]
        route = engine.route_from_override(adapters, [x / sum(w) for x in w])
        t0 = time.perf_counter()
        engine.composition_name(route)  # compose + write the folder
        publish.append(_ms(t0))
        t0 = time.perf_counter()
        engine.preload(route)  # POST /v1/load_lora_adapter
        load.append(_ms(t0))
    return {"reps": reps, "publish_ms": statistics.median(publish), "load_ms": statistics.median(load),
            "publish_ms_all": publish, "load_ms_all": load}


def bench_steady(engine, reps: int, tokens: int) -> dict[str, Any]:
    prompt = "Write a long story about a lighthouse keeper and the sea, with many details."
    route = engine.route(prompt)
    [g] = engine.generate([prompt], [route], max_new_tokens=tokens)  # loads the composition
    name = engine.composition_name(route)
    ids = engine.tokenizer(engine.prompts.render(prompt)[0], add_special_tokens=False)["input_ids"]
    body = {"model": name, "prompt": ids, "max_tokens": tokens, "temperature": 0.0, "top_p": 1.0}
    routed, plain = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        [g] = engine.generate([prompt], max_new_tokens=tokens)  # routed on its text, as a user call
        routed.append(_ms(t0))
        t0 = time.perf_counter()
        r = engine._client.post("/completions", json=body)
        r.raise_for_status()
        plain.append(_ms(t0))
    ratios = [a / b for a, b in zip(routed, plain)]
    return {"reps": reps, "tokens": tokens, "completion_tokens": g.completion_tokens,
            "routed_ms": statistics.median(routed), "plain_ms": statistics.median(plain),
            "overhead": statistics.median(ratios) - 1.0, "route": route.adapters}


def bench_concurrent(engine, local, n: int, tokens: int) -> dict[str, Any]:
    queries = _queries(n)
    routes = engine.route_many(queries)
    out: dict[str, Any] = {"n": len(queries), "tokens": tokens,
                           "distinct_routes": len({r.key() for r in routes})}
    engine.generate(queries[:1], routes[:1], max_new_tokens=2)  # warm the HTTP client
    t0 = time.perf_counter()
    gens = engine.generate(queries, routes, max_new_tokens=tokens)
    out["vllm_s"] = _ms(t0) / 1000
    out["vllm_tokens"] = sum(g.completion_tokens for g in gens)
    if local is not None:
        local.generate(queries[:1], routes[:1], max_new_tokens=2)
        t0 = time.perf_counter()
        lgens = local.generate(queries, routes, max_new_tokens=tokens)
        out["local_s"] = _ms(t0) / 1000
        out["local_tokens"] = sum(g.completion_tokens for g in lgens)
        out["identical"] = sum(a.text == b.text for a, b in zip(gens, lgens))
    return out


def run(url: str, *, reps: int = 15, tokens: int = 8, n: int = 16, local: bool = True) -> dict[str, Any]:
    import os

    from ..engine.vllm import VLLMEngine

    engine = VLLMEngine.demo(base_url=url)
    result: dict[str, Any] = {"url": url, "model": engine.model_name, "loadavg_start": os.getloadavg()}
    try:
        result["cold"] = bench_cold(engine, reps)
        result["steady"] = bench_steady(engine, reps, tokens)
        local_engine = None
        if local:
            from ..engine.local import RoutedModel

            local_engine = RoutedModel.demo()
        result["concurrent"] = bench_concurrent(engine, local_engine, n, tokens)
        result["stats"] = dict(engine.stats)
    finally:
        engine.unload_all()
        engine.close()
    result["loadavg_end"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the vLLM server's /v1 base URL (make vllm-start prints it)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--n", type=int, default=16, help="concurrent routed requests")
    ap.add_argument("--no-local", action="store_true", help="skip the local engine comparison")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    res = run(args.url, reps=args.reps, tokens=args.tokens, n=args.n, local=not args.no_local)
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
