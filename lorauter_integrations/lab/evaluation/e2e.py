"""End-to-end evaluation: route every test query, generate with the routed adapters, score.

For each strategy (``base``, ``oracle``, ``lorauter``, ``retriever``, ``examples``, ``uniform``,
...) every query is routed on its text, all (query, route) pairs are generated through
``RoutedModel.generate`` (greedy; one batched call per metric, items with different routes in one
forward pass), and answers are scored with the task's metric (`metrics`). Reported: per task,
per domain (mean of its tasks), the mean over tasks, and each strategy's mean as % of the oracle.

Unseen-task mode (``ood``): the query's own adapter is unreachable — its task and every task
mapped to the same adapter are excluded from routing, and a route that still names the adapter
(strategies that ignore task exclusion, e.g. ``uniform``) has it removed. ``oracle`` keeps the
own adapter in both modes: it is the reference the routed strategies are measured against.

Identical (prompt, route) pairs are generated once, so ``base`` and ``oracle`` cost nothing extra
when both modes are evaluated in one run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from ...data import Example, read_jsonl
from ...errors import InvalidInputError
from ...route import Route
from .metrics import max_new_tokens_for, score, task_score

DEFAULT_STRATEGIES = ("base", "oracle", "lorauter", "retriever", "examples", "uniform")
#: An answerer: (queries, ood, max new tokens per metric) -> one answer per query.
Answerer = Callable[[Sequence[Example], bool, dict[str, int]], Sequence[str]]
_MODE_FREE = ("base", "oracle")  # strategies whose routes do not depend on the ood flag


class TaskResult(BaseModel):
    task: str
    domain: str | None
    metric: str
    n: int
    scores: dict[str, float] = Field(description="Strategy -> task score (0-100).")


class PairedDiff(BaseModel):
    """``a`` minus ``b`` (mean task scores), with its paired bootstrap 95% interval."""

    a: str
    b: str
    diff: float
    ci95: tuple[float, float]
    excludes_zero: bool


class E2EResult(BaseModel):
    """One evaluation mode (ID or OOD) over all strategies."""

    ood: bool
    strategies: list[str]
    tasks: list[TaskResult]
    domains: dict[str, dict[str, float]] = Field(description="Domain -> strategy -> mean task score.")
    mean: dict[str, float] = Field(description="Strategy -> mean task score.")
    pct_of_oracle: dict[str, float] = Field(description="Strategy -> mean / oracle mean x 100.")
    ci95: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Strategy -> bootstrap 95% interval of the mean task score.")
    paired: list[PairedDiff] = Field(
        default_factory=list, description="Paired differences of means (same resampled queries for both).")
    fallback_rate: dict[str, float] = Field(
        default_factory=dict, description="Strategy -> share of queries that fell back (base model, or a damped mixture).")
    samples: list[dict] = Field(default_factory=list, description="Per query: task, strategy, answer, score, adapters.")


class E2EReport(BaseModel):
    """Everything one `lorauter eval` run measured."""

    test_file: str
    limit_per_task: int | None
    model: str
    generations: int = Field(description="Distinct (prompt, route) pairs generated.")
    seconds: float
    results: list[E2EResult]


def select_queries(
    examples: Sequence[Example], tasks: Sequence[str] | None, limit_per_task: int | None
) -> list[Example]:
    """The first ``limit_per_task`` queries of each wanted task, in file order (deterministic)."""
    wanted = None if tasks is None else set(tasks)
    taken: dict[str, int] = defaultdict(int)
    out = []
    for ex in examples:
        if ex.targets is None or (wanted is not None and ex.task not in wanted):
            continue
        if limit_per_task is not None and taken[ex.task] >= limit_per_task:
            continue
        taken[ex.task] += 1
        out.append(ex)
    if not out:
        raise InvalidInputError("no test query with `targets` left for the selected tasks")
    return out


def _drop_adapters(route: Route, banned: frozenset[str]) -> Route:
    """``route`` without the banned adapters (the rest rescaled to the route's total weight, which
    is 1 or, for a damped fallback, the damping; empty -> base model)."""
    keep = [(a, w) for a, w in zip(route.adapters, route.weights) if a not in banned]
    if len(keep) == len(route.adapters):
        return route
    total = sum(w for _, w in keep)
    if not keep or total <= 0:
        return route.model_copy(update={"adapters": [], "weights": [], "fallback": True, "fallback_reason": "no_adapter"})
    scale = sum(route.weights) / total
    return route.model_copy(update={"adapters": [a for a, _ in keep], "weights": [w * scale for _, w in keep]})


_VARIANT = re.compile(r"^([\w-]+)(?:\[(.*)\])?$")


def parse_strategy(spec: str) -> tuple[str, dict[str, float | int | str]]:
    """``"lorauter[floor=0.21,below_floor=damped]"`` -> ``("lorauter", {"floor": 0.21, ...})``:
    a strategy with router settings of its own (a variant evaluated beside the plain strategy)."""
    match = _VARIANT.match(spec.strip())
    if not match:
        raise InvalidInputError(f"strategy {spec!r}: write NAME or NAME[key=value,...]")
    name, body = match.group(1), match.group(2)
    settings: dict[str, float | int | str] = {}
    for part in filter(None, (p.strip() for p in (body or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"strategy {spec!r}: settings are key=value pairs, got {part!r}")
        try:
            settings[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            settings[key.strip()] = value.strip()
    return name, settings


def split_strategies(text: str) -> list[str]:
    """Comma-separated strategies; commas inside ``[...]`` belong to a variant's settings."""
    return [s.strip() for s in re.split(r",(?![^\[]*\])", text) if s.strip()]


def _routes(engine, strategy: str, queries: Sequence[Example], ood: bool, task_to_adapter: dict[str, str]) -> list[Route]:
    from ...routing import build_router

    name, settings = parse_strategy(strategy)
    if name == "oracle":
        oracle = build_router("oracle", None, task_to_adapter)
        return [oracle.route(q.inputs, known_task=q.task) for q in queries]
    if settings:  # a variant: the engine's router settings with these on top
        router = build_router(name, engine.routers.store, task_to_adapter, **{**engine.routers.config, **settings})
        route_one = lambda text, **kw: router.route(text, **kw)  # noqa: E731
    else:
        route_one = lambda text, **kw: engine.route(text, strategy=name, **kw)  # noqa: E731
    routes = []
    for q in queries:
        if not ood:
            routes.append(route_one(q.inputs))
            continue
        own = task_to_adapter.get(q.task)
        siblings = {t for t, a in task_to_adapter.items() if own is not None and a == own}
        route = route_one(q.inputs, exclude_tasks=siblings | {q.task})
        routes.append(_drop_adapters(route, frozenset({own} if own else ())))
    return routes


def evaluate_e2e(
    engine,
    test: str | Path | Sequence[Example],
    *,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    ood_modes: Sequence[bool] = (False,),
    tasks: Sequence[str] | None = None,
    limit_per_task: int | None = 5,
    max_new_tokens: dict[str, int] | None = None,
    progress: bool = True,
    keep_samples: bool = True,
    cache: str | Path | None = None,
    bootstrap: int = 1000,
    pairs: Sequence[tuple[str, str]] | None = None,
    answerers: Mapping[str, Answerer] | None = None,
) -> E2EReport:
    """Generate and score every selected test query under every strategy and mode.

    ``tasks`` None: the tasks that have an adapter in the engine's pool (the others only add
    generation time that no adapter can change under ``oracle``). ``cache``: a JSON file of
    answers keyed by model, prompt, route and budget, so that later runs (more strategies, the
    other mode) only generate what is new; greedy decoding makes the answers reusable.
    ``bootstrap``: resamples for the 95% intervals (queries resampled with replacement inside each
    task, every strategy on the same resamples; 0: none). ``pairs``: (a, b) strategy pairs whose
    paired difference is reported (default: lorauter minus oracle, retriever, uniform, base).
    ``answerers``: extra strategies that answer by other means than a `Route` on this engine (e.g.
    PEFT's Arrow, which routes per token inside the model): name -> ``fn(queries, ood, budgets)``
    returning one answer per query; scored, bootstrapped and paired like the others.
    """
    examples = read_jsonl(test) if isinstance(test, (str, Path)) else list(test)
    task_to_adapter = dict(engine.pool.task_to_adapter)
    if tasks is None:
        own = {t for t, a in task_to_adapter.items() if t == a}
        tasks = sorted(own or task_to_adapter)
    answerers = dict(answerers or {})
    for spec in strategies:
        parse_strategy(spec)  # a malformed variant is refused before any work
    clash = sorted(set(answerers) & set(strategies))
    if clash:
        raise InvalidInputError(f"{clash} named both as a strategy and as an answerer")
    queries = select_queries(examples, tasks, limit_per_task)
    budgets = {m: (max_new_tokens or {}).get(m, max_new_tokens_for(m)) for m in ("em", "bleu", "rouge")}
    start = time.perf_counter()

    # 1. Routes of every (mode, strategy, query).
    plans: dict[tuple[bool, str], list[Route]] = {}
    for ood in ood_modes:
        for strategy in strategies:
            source = (False, strategy) if strategy in _MODE_FREE and (False, strategy) in plans else None
            plans[(ood, strategy)] = plans[source] if source else _routes(engine, strategy, queries, ood, task_to_adapter)

    # 2. Distinct (query, route) pairs, generated per metric in one batched call each.
    jobs: OrderedDict[tuple[int, tuple], Route] = OrderedDict()
    for routes in plans.values():
        for qi, route in enumerate(routes):
            jobs.setdefault((qi, route.key()), route)
    answers: dict[tuple[int, tuple], str] = {}
    stored = _AnswerCache(cache, getattr(engine, "model_name", "?"))
    by_metric: dict[str, list[tuple[int, tuple]]] = defaultdict(list)
    for key in jobs:
        q = queries[key[0]]
        hit = stored.get(q.inputs, key[1], budgets[q.metric])
        if hit is None:
            by_metric[q.metric].append(key)
        else:
            answers[key] = hit
    bar = tqdm(total=len(jobs) - len(answers), desc="generate", unit="answer", disable=not progress)
    for metric, keys in by_metric.items():
        # Similar prompt lengths together (less padding); chunks of one engine batch keep the
        # progress bar moving.
        keys.sort(key=lambda k: len(queries[k[0]].inputs))
        step = max(1, getattr(engine, "max_batch_size", 16))
        for s in range(0, len(keys), step):
            chunk = keys[s : s + step]
            gens = engine.generate([queries[qi].inputs for qi, _ in chunk], [jobs[k] for k in chunk],
                                   max_new_tokens=budgets[metric], temperature=0.0)
            for k, g in zip(chunk, gens):
                answers[k] = g.text
                stored.put(queries[k[0]].inputs, k[1], budgets[metric], g.text)
            stored.save()
            bar.update(len(chunk))
    bar.close()
    external = {(ood, name): list(fn(queries, ood, budgets)) for ood in ood_modes for name, fn in answerers.items()}
    for (ood, name), got in external.items():
        if len(got) != len(queries):
            raise InvalidInputError(f"answerer {name!r} gave {len(got)} answers for {len(queries)} queries")
    scored = list(strategies) + list(answerers)

    # 3. Scores.
    results = []
    for ood in ood_modes:
        per_task: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
        samples = []
        for strategy in scored:
            for qi, q in enumerate(queries):
                if strategy in answerers:
                    answer, adapters = external[(ood, strategy)][qi], {}
                else:
                    route = plans[(ood, strategy)][qi]
                    answer = answers[(qi, route.key())]
                    adapters = dict(zip(route.adapters, [round(w, 3) for w in route.weights]))
                per_task[q.task][strategy].append((answer, q.targets))
                if keep_samples:
                    samples.append({"task": q.task, "strategy": strategy, "answer": answer,
                                    "score": round(score(q.metric, answer, q.targets), 2), "adapters": adapters})
        meta = {q.task: q for q in queries}
        task_results = []
        for task, by_strategy in per_task.items():
            q = meta[task]
            task_results.append(TaskResult(
                task=task, domain=q.domain, metric=q.metric, n=len(next(iter(by_strategy.values()))),
                scores={s: round(task_score(q.metric, [a for a, _ in pairs], [r for _, r in pairs]), 2)
                        for s, pairs in by_strategy.items()},
            ))
        res = _summarise(ood, scored, task_results, samples)
        if bootstrap:
            items = {t: {s: pairs_ for s, pairs_ in by_s.items()} for t, by_s in per_task.items()}
            res.ci95, res.paired = bootstrap_intervals(items, {t: meta[t].metric for t in items}, scored,
                                                       pairs if pairs is not None else default_pairs(scored),
                                                       resamples=bootstrap)
        res.fallback_rate = {s: round(sum(r.is_base or r.fallback for r in plans[(ood, s)]) / len(queries), 4)
                             for s in strategies}
        results.append(res)
    return E2EReport(
        test_file=str(test) if isinstance(test, (str, Path)) else "<examples>",
        limit_per_task=limit_per_task,
        model=getattr(engine, "model_name", "?"),
        generations=len(jobs),
        seconds=round(time.perf_counter() - start, 1),
        results=results,
    )


def default_pairs(strategies: Sequence[str]) -> list[tuple[str, str]]:
    """lorauter minus oracle, retriever, uniform, arrow and base (those of ``strategies``), and each
    variant ``NAME[...]`` minus its plain ``NAME``."""
    if "lorauter" not in strategies:
        return []
    pairs = [("lorauter", b) for b in ("oracle", "retriever", "uniform", "arrow", "base") if b in strategies]
    for spec in strategies:
        name, settings = parse_strategy(spec)
        if settings and name in strategies:
            pairs.append((spec, name))
    return pairs


def _item_stats(metric: str, pairs: Sequence[tuple[str, str]]):
    """Per query: its score (em, rouge) or its BLEU sufficient statistics (bleu), as an array."""
    import numpy as np

    if metric == "bleu":
        from sacrebleu.metrics import BLEU

        bleu = BLEU()
        return np.asarray(bleu._extract_corpus_statistics([a for a, _ in pairs], [[r for _, r in pairs]]), dtype=float)
    return np.asarray([score(metric, a, r) for a, r in pairs], dtype=float)


def _task_scores(metric: str, stats, idx):
    """Task score of every resample (rows of ``idx``): the mean item score, or corpus BLEU."""
    import numpy as np

    if metric != "bleu":
        return stats[idx].mean(axis=1)
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    sums = stats[idx].sum(axis=1)  # (resamples, stats)
    return np.asarray([bleu._compute_score_from_stats(list(row)).score for row in sums])


def bootstrap_intervals(
    items: dict[str, dict[str, list[tuple[str, str]]]],
    metrics_: dict[str, str],
    strategies: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, tuple[float, float]], list[PairedDiff]]:
    """Percentile bootstrap of the mean task score (each task's queries resampled with
    replacement, the same resample for every strategy, so differences are paired).

    ``items``: task -> strategy -> [(answer, reference), ...] in the same query order for every
    strategy. Returns strategy -> (low, high) and the paired differences of ``pairs``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    totals = {s: np.zeros(resamples) for s in strategies}
    for task in sorted(items):
        by_s = items[task]
        n = len(next(iter(by_s.values())))
        idx = rng.integers(0, n, size=(resamples, n))
        for s in strategies:
            totals[s] += _task_scores(metrics_[task], _item_stats(metrics_[task], by_s[s]), idx)
    means = {s: totals[s] / len(items) for s in strategies}
    ci = {s: (round(float(np.percentile(m, 2.5)), 2), round(float(np.percentile(m, 97.5)), 2)) for s, m in means.items()}
    point = {s: float(np.mean([task_score(metrics_[t], [a for a, _ in items[t][s]], [r for _, r in items[t][s]])
                               for t in items])) for s in strategies}
    paired = []
    for a, b in pairs:
        if a not in means or b not in means:
            continue
        d = means[a] - means[b]
        lo, hi = float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))
        paired.append(PairedDiff(a=a, b=b, diff=round(point[a] - point[b], 2), ci95=(round(lo, 2), round(hi, 2)),
                                 excludes_zero=bool(lo > 0 or hi < 0)))
    return ci, paired


class _AnswerCache:
    """Greedy answers on disk, keyed by model, prompt, route key and token budget."""

    def __init__(self, path: str | Path | None, model: str):
        self.path = Path(path) if path else None
        self.model = model
        self.data: dict[str, str] = {}
        if self.path is not None and self.path.exists():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def _key(self, prompt: str, route_key: tuple, budget: int) -> str:
        raw = json.dumps([self.model, prompt, route_key, budget], ensure_ascii=False)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def get(self, prompt: str, route_key: tuple, budget: int) -> str | None:
        return self.data.get(self._key(prompt, route_key, budget))

    def put(self, prompt: str, route_key: tuple, budget: int, answer: str) -> None:
        self.data[self._key(prompt, route_key, budget)] = answer

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)  # an interrupted run keeps every answer saved so far


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 2) if values else math.nan


def _summarise(ood: bool, strategies: list[str], task_results: list[TaskResult], samples: list[dict]) -> E2EResult:
    domains: dict[str, dict[str, float]] = {}
    by_domain: dict[str, list[TaskResult]] = defaultdict(list)
    for tr in task_results:
        by_domain[tr.domain or "-"].append(tr)
    for domain, trs in sorted(by_domain.items()):
        domains[domain] = {s: _mean([t.scores[s] for t in trs]) for s in strategies}
    mean = {s: _mean([t.scores[s] for t in task_results]) for s in strategies}
    oracle = mean.get("oracle")
    pct = {s: round(100.0 * m / oracle, 1) for s, m in mean.items()} if oracle else {}
    return E2EResult(ood=ood, strategies=strategies, tasks=task_results, domains=domains, mean=mean,
                     pct_of_oracle=pct, samples=samples)


# ----------------------------------------------------------------------------- reports
def markdown(report: E2EReport) -> str:
    """Per-task, per-domain and mean tables of every mode, as Markdown."""
    lines = [f"Model `{report.model}`, test file `{report.test_file}`, {report.limit_per_task or 'all'} "
             f"queries per task, greedy decoding; {report.generations} generations in {report.seconds:.0f} s.",
             "Scores 0-100: EM (lower-cased, stripped, periods removed), BLEU (sacrebleu corpus BLEU), "
             "ROUGE-L F1 (rouge-score)."]
    for res in report.results:
        head = "| " + " | ".join(res.strategies) + " |"
        rule = "|" + "---:|" * len(res.strategies)
        lines += ["", f"### {'Unseen tasks (OOD: own adapter excluded)' if res.ood else 'In-distribution (ID)'}", "",
                  "| | " + " | ".join(res.strategies) + " |", "|---|" + "---:|" * len(res.strategies)]
        lines.append("| **mean** | " + " | ".join(f"**{res.mean[s]:.1f}**" for s in res.strategies) + " |")
        if res.pct_of_oracle:
            lines.append("| % of oracle | " + " | ".join(f"{res.pct_of_oracle[s]:.0f}%" for s in res.strategies) + " |")
        if res.ci95:
            lines.append("| 95% CI | " + " | ".join(f"{res.ci95[s][0]:.1f}-{res.ci95[s][1]:.1f}" for s in res.strategies) + " |")
        if res.fallback_rate:
            lines.append("| base-model share | " + " | ".join(  # answerers have no routes: "-"
                f"{res.fallback_rate[s]:.2f}" if s in res.fallback_rate else "-" for s in res.strategies) + " |")
        if res.paired:
            lines += ["", "Paired differences of the mean (bootstrap 95% CI, same resampled queries):", "",
                      "| difference | points | 95% CI | excludes 0 |", "|---|---:|---|---|"]
            for p in res.paired:
                lines.append(f"| {p.a} - {p.b} | {p.diff:+.2f} | {p.ci95[0]:+.2f} .. {p.ci95[1]:+.2f} | "
                             f"{'yes' if p.excludes_zero else 'no'} |")
        lines += ["", "Per domain (mean of its tasks):", "", "| domain " + head, "|---" + rule]
        for domain, scores in res.domains.items():
            lines.append(f"| {domain} | " + " | ".join(f"{scores[s]:.1f}" for s in res.strategies) + " |")
        lines += ["", "Per task:", "", "| task | metric | n " + head, "|---|---|---:" + rule]
        for t in res.tasks:
            lines.append(f"| {t.task} | {t.metric} | {t.n} | " + " | ".join(f"{t.scores[s]:.1f}" for s in res.strategies) + " |")
    return "\n".join(lines) + "\n"


def per_adapter_markdown(report: E2EReport) -> str:
    """Each adapter on its own task (``oracle``) against the base model, from an ID result."""
    res = next((r for r in report.results if not r.ood), None)
    if res is None or not {"base", "oracle"} <= set(res.strategies):
        raise InvalidInputError("the per-adapter table needs an in-distribution run with base and oracle")
    lines = ["| adapter (= task) | domain | metric | n | base model | adapter | delta |", "|---|---|---|---:|---:|---:|---:|"]
    for t in sorted(res.tasks, key=lambda t: (t.domain or "", t.task)):
        b, o = t.scores["base"], t.scores["oracle"]
        lines.append(f"| {t.task} | {t.domain} | {t.metric} | {t.n} | {b:.1f} | {o:.1f} | {o - b:+.1f} |")
    b, o = res.mean["base"], res.mean["oracle"]
    lines.append(f"| **mean** | | | | **{b:.1f}** | **{o:.1f}** | **{o - b:+.1f}** |")
    return "\n".join(lines) + "\n"


def plot(report: E2EReport, path: str | Path) -> Path:
    """A bar chart of the mean score per strategy, ID and OOD side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    strategies = report.results[0].strategies
    width = 0.8 / len(report.results)
    fig, ax = plt.subplots(figsize=(1.3 * len(strategies) + 2, 4))
    for i, res in enumerate(report.results):
        xs = [j + (i - (len(report.results) - 1) / 2) * width for j in range(len(strategies))]
        yerr = None
        if res.ci95:
            yerr = [[res.mean[s] - res.ci95[s][0] for s in strategies], [res.ci95[s][1] - res.mean[s] for s in strategies]]
        bars = ax.bar(xs, [res.mean[s] for s in strategies], width, yerr=yerr, capsize=3,
                      label="OOD (own adapter excluded)" if res.ood else "ID")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(strategies)), strategies)
    ax.set_ylabel("mean task score (0-100)")
    ax.set_title(f"End-to-end quality, {report.model} ({report.limit_per_task or 'all'} queries/task; bars: bootstrap 95% CI)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
