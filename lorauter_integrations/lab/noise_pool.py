"""Noisy adapter pools: a trained pool plus generated noise adapters, all real PEFT LoRA folders.

LoRAuter maps tasks to adapters in pools of about 1,500 adapters of uneven quality, where an
adapter's label cannot be trusted. This module builds such a pool from a trained one (the demo
pool) so that the task -> adapter mapping (`lorauter_integrations.lab.mapping`) can be checked and
timed at that scale:

- ``original``    the source pool's adapters, same ids and tasks;
- ``duplicate``   byte-identical copies of an original under a new id (hard links when the file
  system allows), declared for the original's tasks or unlabelled;
- ``mislabelled`` an original's weights declared for a task it was not trained on;
- ``random``      random LoRA factors with the originals' shapes and per-module scale, declared
  for a random task or unlabelled.

Manifest entries are shuffled (seeded), so a pool's *declared* task -> adapter map (the first
adapter listing a task wins) is hijacked by noise for some tasks, as in a crowd-sourced hub.
Every entry records its ``kind`` and ``source`` (the original whose weights it carries), which
is what a benchmark compares a mapping against; the pool itself never reads these fields.

>>> report = build_noisy_pool("lorauter_integrations/_adapters/flan", "/tmp/noisy", tasks=names)  # doctest: +SKIP
>>> report.counts  # doctest: +SKIP
{'original': 16, 'duplicate': 32, 'mislabelled': 16, 'random': 1472}
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ..errors import AdapterError, InvalidInputError
from ..adapters.pool import MANIFEST, AdapterPool

Kind = Literal["original", "duplicate", "mislabelled", "random"]
_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"
_DONE = ".noisy-pool.json"  # written last: its presence means the pool is complete


class NoisyPoolConfig(BaseModel):
    """How many adapters of each kind to generate."""

    model_config = ConfigDict(frozen=True)

    size: int = Field(default=1536, ge=1, description="Total adapters in the pool, originals included.")
    duplicates_per_adapter: int = Field(default=2, ge=0, description="Exact copies of each original.")
    mislabelled_per_adapter: int = Field(default=1, ge=0, description="Copies of each original declared for another task.")
    labelled_share: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Share of duplicates and random adapters that declare a task."
    )
    seed: int = Field(default=0, description="Seed of the random factors, labels and manifest order.")


class NoisyPoolReport(BaseModel):
    """What `build_noisy_pool` produced (or found already built)."""

    path: Path
    size: int
    counts: dict[str, int]
    source_adapters: list[str]
    seconds: float = Field(description="Time to build it (0 when an identical pool was reused).")
    reused: bool = False


def _fingerprint(source_dir: Path, config: NoisyPoolConfig, tasks: Sequence[str]) -> str:
    """Identity of a pool build: the source adapters' bytes, the config and the task list."""
    h = hashlib.sha256(config.model_dump_json().encode())
    h.update(json.dumps(sorted(tasks)).encode())
    for folder in sorted(p for p in source_dir.iterdir() if (p / _WEIGHTS).exists()):
        st = (folder / _WEIGHTS).stat()
        h.update(f"{folder.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a real copy is as good
        shutil.copyfile(src, dst)


def _write_copy(src_folder: Path, dst_folder: Path) -> None:
    dst_folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src_folder / _CONFIG, dst_folder / _CONFIG)
    _link_or_copy(src_folder / _WEIGHTS, dst_folder / _WEIGHTS)


def _module_scales(weight_files: Sequence[Path]) -> tuple[dict, dict]:
    """Shapes, dtypes and the mean std of every tensor over the originals (the random adapters' scale)."""
    from safetensors.torch import load_file

    shapes: dict[str, tuple] = {}
    stds: dict[str, list[float]] = {}
    for path in weight_files:
        for key, tensor in load_file(str(path)).items():
            shapes.setdefault(key, (tuple(tensor.shape), tensor.dtype))
            if (tuple(tensor.shape), tensor.dtype) == shapes[key]:
                stds.setdefault(key, []).append(float(tensor.float().std()))
    return shapes, {k: sum(v) / len(v) for k, v in stds.items()}


def build_noisy_pool(
    source_dir: str | Path,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] = (),
    config: NoisyPoolConfig = NoisyPoolConfig(),
    progress: bool = True,
) -> NoisyPoolReport:
    """Write a pool of ``config.size`` PEFT LoRA folders to ``out_dir``: the source pool's adapters
    plus duplicated, mis-labelled and random ones, with a shuffled ``adapters.json`` manifest.

    ``tasks`` is the universe of task names noise adapters may claim (default: the source pool's
    tasks). An identical, complete pool already in ``out_dir`` is reused; anything else there is
    replaced.
    """
    import torch
    from safetensors.torch import save_file

    source = Path(source_dir)
    src_pool = AdapterPool.from_dir(source)
    if not len(src_pool):
        raise AdapterError(f"the source pool {source} holds no adapter: train the demo pool first")
    originals = src_pool.records
    for rec in originals:
        if rec.weights_format != "safetensors":
            raise AdapterError(f"adapter '{rec.id}' has no safetensors file; convert it before building a noisy pool")
    universe = sorted(set(tasks) | {t for r in originals for t in r.tasks})
    if len(universe) < 2:
        raise InvalidInputError("a noisy pool needs at least two task names to mis-label adapters: pass tasks=")
    n_fixed = len(originals) * (1 + config.duplicates_per_adapter + config.mislabelled_per_adapter)
    if config.size < n_fixed:
        raise InvalidInputError(
            f"size {config.size} is below the {n_fixed} originals, duplicates and mis-labelled copies "
            f"of a {len(originals)}-adapter pool: raise size or lower the per-adapter counts"
        )

    out = Path(out_dir)
    fingerprint = _fingerprint(source, config, universe)
    done = out / _DONE
    if done.exists():
        try:
            marker = json.loads(done.read_text(encoding="utf-8"))
            if marker.pop("fingerprint", None) == fingerprint:
                return NoisyPoolReport.model_validate(marker).model_copy(update={"seconds": 0.0, "reused": True})
        except ValueError:
            pass  # unreadable marker: rebuild
    start = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    entries: list[dict] = []
    src_manifest = source / MANIFEST
    src_entries = json.loads(src_manifest.read_text(encoding="utf-8"))["adapters"] if src_manifest.exists() else []
    trained_on = {e["id"]: e["trained_on"] for e in src_entries if e.get("trained_on")}
    for rec in originals:
        _write_copy(rec.path, out / rec.id)
        entry = {"id": rec.id, "path": rec.id, "tasks": list(rec.tasks), "kind": "original", "source": rec.id,
                 "description": rec.description}
        if rec.id in trained_on:  # what the mapping treats as the task's own adapter
            entry["trained_on"] = trained_on[rec.id]
        entries.append(entry)
    for rec in originals:
        for i in range(config.duplicates_per_adapter):
            aid = f"dup-{rec.id}-{i}"
            _write_copy(rec.path, out / aid)
            labelled = rng.random() < config.labelled_share
            entries.append({"id": aid, "path": aid, "tasks": list(rec.tasks) if labelled else [], "kind": "duplicate",
                            "source": rec.id, "description": f"exact copy of {rec.id}"})
        for i in range(config.mislabelled_per_adapter):
            aid = f"mislabelled-{rec.id}-{i}"
            _write_copy(rec.path, out / aid)
            claim = rng.choice([t for t in universe if t not in rec.tasks])
            entries.append({"id": aid, "path": aid, "tasks": [claim], "kind": "mislabelled", "source": rec.id,
                            "description": f"weights of {rec.id}, declared for {claim}"})

    template = originals[0].path
    shapes, stds = _module_scales([r.path / _WEIGHTS for r in originals])
    n_random = config.size - len(entries)
    for i in tqdm(range(n_random), desc="random adapters", unit="adapter", disable=not progress):
        aid = f"random-{i:05d}"
        folder = out / aid
        folder.mkdir()
        shutil.copyfile(template / _CONFIG, folder / _CONFIG)
        tensors = {key: (torch.randn(shape, generator=gen) * stds[key]).to(dtype) for key, (shape, dtype) in shapes.items()}
        save_file(tensors, str(folder / _WEIGHTS), metadata={"format": "pt"})
        claim = [rng.choice(universe)] if rng.random() < config.labelled_share else []
        entries.append({"id": aid, "path": aid, "tasks": claim, "kind": "random", "source": None,
                        "description": "random LoRA factors at the trained adapters' scale"})

    rng.shuffle(entries)
    manifest = {"base_model": src_pool.base_model or originals[0].base_model, "adapters": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    report = NoisyPoolReport(path=out, size=len(entries), counts=counts, source_adapters=[r.id for r in originals],
                             seconds=round(time.perf_counter() - start, 2))
    done.write_text(json.dumps({**json.loads(report.model_dump_json()), "fingerprint": fingerprint}), encoding="utf-8")
    return report


def weight_sources(pool_dir: str | Path) -> dict[str, str | None]:
    """Adapter id -> the original whose weights it carries (None for random adapters)."""
    manifest = json.loads((Path(pool_dir) / MANIFEST).read_text(encoding="utf-8"))
    return {e["id"]: e.get("source") for e in manifest["adapters"]}


__all__ = ["NoisyPoolConfig", "NoisyPoolReport", "build_noisy_pool", "weight_sources"]
