"""`AdapterPool`: the LoRA adapters a `RoutedModel` may compose, checked, lazily loaded, bounded.

An adapter is a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``). A pool
dir may carry a manifest ``adapters.json``::

    {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
     "adapters": [{"id": "sst2", "path": "sst2", "tasks": ["sst2"], "description": "..."}]}

Registration reads only the config and the safetensors *header* (names and shapes), so checking a
pool of 1,500 adapters against the base model is cheap; the tensors themselves are read on first
use and kept in an LRU bounded by ``max_resident``. Adapters can be added and removed while the
pool serves (every operation holds the pool's lock; a removed adapter's resident weights are
dropped and its revision bumped so cached compositions built from it are never reused).

>>> pool = AdapterPool.from_dir("lorauter_integrations/_adapters/flan")
>>> pool.task_to_adapter["sst2"]
'sst2'
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from ..errors import AdapterError, IncompatibleAdapterError, UnknownAdapterError
from .manifest import MANIFEST, load_manifest

_SAFE_WEIGHTS = "adapter_model.safetensors"
_PICKLE_WEIGHTS = "adapter_model.bin"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# PEFT saves "base_model.model.<module>.lora_A.weight"; some tools keep the adapter name in it.
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")
# Config switches that change the LoRA forward beyond W x + s * B A x: we refuse rather than
# silently compute something else.
_UNSUPPORTED_FLAGS = (
    "use_dora", "lora_bias", "alora_invocation_tokens", "target_parameters", "trainable_token_indices",
    "layer_replication",
)
#: Tensor dtypes an adapter may be stored in (safetensors header names and torch names).
ACCEPTED_DTYPES = ("float16", "bfloat16", "float32")
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
#: A LoRA factor value beyond this is not a trained adapter (it overflows fp16 and wrecks outputs).
MAX_ABS_VALUE = 1e6


class AdapterRecord(BaseModel):
    """What the pool knows about one adapter without reading its weights."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="Adapter id, unique in the pool.")
    path: Path = Field(description="Adapter folder.")
    tasks: list[str] = Field(default_factory=list, description="Tasks this adapter was trained for.")
    description: str = Field(default="", description="Free text from the manifest.")
    base_model: str | None = Field(default=None, description="base_model_name_or_path of the adapter.")
    rank: int = Field(description="Largest LoRA rank over its modules.")
    modules: dict[str, tuple[int, int, int]] = Field(
        description="Target module name -> (rank, in_features, out_features)."
    )
    scaling: dict[str, float] = Field(description="Target module name -> LoRA scaling (alpha / r).")
    weights_format: Literal["safetensors", "pickle"] = "safetensors"
    revision: int = Field(default=0, description="Bumped on every (re-)registration of this id.")
    files: dict[str, tuple[int, int]] = Field(
        default_factory=dict,
        description="File read at registration -> (size, mtime_ns): a change on disk triggers a reload.",
    )


@dataclass(frozen=True)
class LoRAModuleWeights:
    """One module's LoRA factors: ``delta(x) = scaling * B @ (A @ x)``; A [r, in], B [out, r]."""

    A: "object"
    B: "object"
    scaling: float


@dataclass(frozen=True)
class AdapterWeights:
    """An adapter's tensors, on the model's device and dtype, keyed by target module name."""

    adapter_id: str
    revision: int
    modules: Mapping[str, LoRAModuleWeights]


def lora_target_shapes(model) -> dict[str, tuple[int, int]]:
    """Module name -> (in_features, out_features) for every module a LoRA adapter may target here.

    Linear layers and GPT-2 style ``Conv1D`` (weight stored transposed) are supported.
    """
    import torch.nn as nn

    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            shapes[name] = (module.in_features, module.out_features)
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            shapes[name] = (module.weight.shape[0], module.weight.shape[1])
    return shapes


def _same_base(adapter_base: str, model_base: str) -> bool:
    """Ids and local copies of one model match: compare the last path component, case-folded."""

    def norm(s: str) -> str:
        return s.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].casefold()

    return adapter_base == model_base or norm(adapter_base) == norm(model_base)


class AdapterPool:
    """A set of PEFT LoRA adapters, checked against one base model and loaded on demand.

    Args:
        root: Pool directory. When set, every adapter path must resolve inside it (symlinks
            included), so a manifest cannot make the pool read files elsewhere.
        allow_pickle: Accept ``adapter_model.bin`` (pickle) when no safetensors file exists.
            Off by default: unpickling can run arbitrary code. Even when allowed, it is loaded
            with ``torch.load(weights_only=True)``.
        max_resident: How many adapters' tensors stay in memory (least recently used evicted).
    """

    def __init__(self, root: str | Path | None = None, *, allow_pickle: bool = False, max_resident: int = 64,
                 check_base_model: bool = True, on_incompatible: str = "raise"):
        if on_incompatible not in ("raise", "skip"):
            raise AdapterError(f"on_incompatible must be 'raise' or 'skip', got {on_incompatible!r}")
        self.check_base_model = check_base_model
        self.on_incompatible = on_incompatible
        self.skipped: dict[str, str] = {}  # adapter id -> why bind() left it out (on_incompatible="skip")
        self._model_fingerprint: str | None = None
        self._layers: list[Path] = []  # pool folders layered over root (add_dir)
        if max_resident < 1:
            raise AdapterError("max_resident must be at least 1")
        self.root = Path(root).resolve() if root is not None else None
        self.allow_pickle = allow_pickle
        self.max_resident = max_resident
        self.base_model: str | None = None  # declared by a manifest
        self._records: dict[str, AdapterRecord] = {}
        self._resident: OrderedDict[str, AdapterWeights] = OrderedDict()
        self._lock = threading.RLock()
        self._revision = 0
        # Set by bind(): the model the adapters must fit, where their tensors go.
        self._model_base: str | None = None
        self._shapes: dict[str, tuple[int, int]] | None = None
        self._device = "cpu"
        self._dtype = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dir(cls, root: str | Path, **kwargs) -> "AdapterPool":
        """Open a pool directory: its ``adapters.json`` manifest, or else every adapter subfolder."""
        root_path = Path(root)
        if not root_path.is_dir():
            raise AdapterError(f"adapter pool directory not found: {root_path}")
        pool = cls(root_path, **kwargs)
        manifest = root_path / MANIFEST
        if manifest.exists() or manifest.is_symlink():
            data = load_manifest(pool._confined_file(root_path, MANIFEST))
            pool.base_model = data.base_model
            for entry in data.adapters:
                pool.register(entry.id, entry.path, tasks=entry.tasks, description=entry.description)
        else:
            for sub in sorted(p for p in root_path.iterdir() if (p / "adapter_config.json").exists()):
                pool.register(sub.name, sub.name)
        return pool

    def add_dir(self, root: str | Path) -> list[AdapterRecord]:
        """Layer another pool folder over this one (a user pool over the bundled demo pool): its
        ``adapters.json`` (or adapter subfolders) are registered, checked against the bound model;
        an id already present is replaced. Adapter files must stay inside that folder."""
        root_path = Path(root)
        if not root_path.is_dir():
            raise AdapterError(f"adapter pool directory not found: {root_path}")
        root_path = root_path.resolve()
        with self._lock:
            if root_path not in self._layers and root_path != self.root:
                self._layers.append(root_path)
        manifest = root_path / MANIFEST
        if manifest.exists() or manifest.is_symlink():
            data = load_manifest(self._confined_file(root_path, MANIFEST))
            entries = [(e.id, e.path, e.tasks, e.description) for e in data.adapters]
        else:
            entries = [(p.name, p.name, [], "") for p in sorted(root_path.iterdir())
                       if (p / "adapter_config.json").exists()]
        return [self.register(i, root_path / path, tasks=tasks, description=desc) for i, path, tasks, desc in entries]

    def _bound_root(self, folder: Path) -> Path | None:
        """The pool folder (root or a layered one) that holds ``folder``."""
        for root in (self.root, *self._layers):
            if root is not None and folder.is_relative_to(root):
                return root
        return None

    def bind(self, model, base_model_id: str | None = None) -> "AdapterPool":
        """Check every adapter against ``model`` and load future weights onto its device and dtype.

        Raises `IncompatibleAdapterError` naming the first adapter that does not fit. Adapters
        registered later are checked at registration.
        """
        from .compatibility import config_fingerprint

        param = next(model.parameters())
        with self._lock:
            self._model_base = base_model_id
            self._shapes = lora_target_shapes(model)
            config = getattr(model, "config", None)
            self._model_fingerprint = config_fingerprint(config) if hasattr(config, "to_dict") else None
            self._device, self._dtype = param.device, param.dtype
            for record in list(self._records.values()):
                try:
                    self._check(record)
                except IncompatibleAdapterError as exc:
                    if self.on_incompatible != "skip":
                        raise
                    warnings.warn(f"adapter pool: skipped {exc}", stacklevel=2)
                    self.skipped[record.id] = str(exc)
                    del self._records[record.id]
                    self._revision += 1
            self._resident.clear()  # tensors may sit on another device/dtype
        return self

    # ----------------------------------------------------------------- registry
    def register(
        self,
        adapter_id: str,
        path: str | Path,
        *,
        tasks: Iterable[str] = (),
        description: str = "",
    ) -> AdapterRecord:
        """Add (or replace) an adapter from a PEFT LoRA folder; reads only its config and header."""
        if not isinstance(adapter_id, str) or not _ID_RE.match(adapter_id) or ".." in adapter_id:
            raise AdapterError(
                f"invalid adapter id {adapter_id!r}: use letters, digits, '.', '_' or '-' (no path separators)"
            )
        if isinstance(tasks, (str, bytes)) or not all(isinstance(t, str) and t for t in tasks):
            raise AdapterError(f"tasks of adapter {adapter_id!r} must be a list of task ids, got {tasks!r}")
        if not isinstance(description, str):
            raise AdapterError(f"the description of adapter {adapter_id!r} must be a string")
        if not isinstance(path, (str, Path)) or (isinstance(path, str) and not path):
            raise AdapterError(f"the path of adapter {adapter_id!r} must be a folder name, got {path!r}")
        folder = self._resolve(path)
        record = self._read_record(adapter_id, folder, list(tasks), description)
        with self._lock:
            self._check(record)
            self._revision += 1
            record = record.model_copy(update={"revision": self._revision})
            self._records[adapter_id] = record
            self._resident.pop(adapter_id, None)
        return record

    def remove(self, adapter_id: str) -> None:
        """Forget an adapter (and its resident tensors). Safe while other threads generate."""
        with self._lock:
            if adapter_id not in self._records:
                raise self._unknown(adapter_id)
            del self._records[adapter_id]
            self._resident.pop(adapter_id, None)
            self._revision += 1

    def __contains__(self, adapter_id: object) -> bool:
        return adapter_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    @property
    def version(self) -> int:
        """Changes whenever an adapter is registered or removed (to refresh derived maps)."""
        return self._revision

    @property
    def ids(self) -> list[str]:
        """Registered adapter ids, in registration order."""
        return list(self._records)

    def record(self, adapter_id: str) -> AdapterRecord:
        """The record of ``adapter_id``; `UnknownAdapterError` when the pool does not hold it."""
        try:
            return self._records[adapter_id]
        except KeyError:
            raise self._unknown(adapter_id) from None

    @property
    def records(self) -> list[AdapterRecord]:
        return list(self._records.values())

    @property
    def task_to_adapter(self) -> dict[str, str]:
        """Task -> adapter as declared by the records (the first adapter declaring a task wins)."""
        mapping: dict[str, str] = {}
        for record in self._records.values():
            for task in record.tasks:
                mapping.setdefault(task, record.id)
        return mapping

    @property
    def resident_ids(self) -> list[str]:
        """Adapters whose tensors are in memory, least recently used first."""
        return list(self._resident)

    # ----------------------------------------------------------------- weights
    def weights(self, adapter_id: str) -> AdapterWeights:
        """The adapter's tensors (read on first use, then kept in the LRU)."""
        with self._lock:
            record = self.record(adapter_id)
            cached = self._resident.get(adapter_id)
            if cached is not None:
                self._resident.move_to_end(adapter_id)
                return cached
            weights = self._load(record)
            self._resident[adapter_id] = weights
            while len(self._resident) > self.max_resident:
                self._resident.popitem(last=False)
            return weights

    # ----------------------------------------------------------------- internals
    def _unknown(self, adapter_id: str) -> UnknownAdapterError:
        known = ", ".join(sorted(self._records)[:10]) or "none"
        return UnknownAdapterError(f"unknown adapter '{adapter_id}' (registered: {known})")

    def _resolve(self, path: str | Path) -> Path:
        raw = Path(path)
        try:
            if self.root is None:
                folder = raw.resolve()
            else:
                folder = (raw if raw.is_absolute() else self.root / raw).resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # NUL bytes, symlink loops, too long
            raise AdapterError(f"adapter path {str(path)!r} cannot be resolved ({exc})") from None
        if self.root is not None:
            if self._bound_root(folder) is None:
                raise AdapterError(
                    f"adapter path {str(path)!r} escapes the pool directory {self.root}: "
                    "keep adapters inside the pool, or layer their folder with pool.add_dir(folder)"
                )
        if not folder.is_dir():
            raise AdapterError(f"adapter folder not found: {folder}")
        return folder

    def _confined_file(self, folder: Path, name: str) -> Path:
        """``folder/name`` with every symlink resolved; refused unless it stays inside the pool
        directory (or, for a pool without one, inside the adapter folder). Missing files come back
        unresolved (the caller says what is missing)."""
        path = Path(folder) / name
        try:
            real = path.resolve(strict=True)
        except FileNotFoundError:
            return path
        except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, permissions
            raise AdapterError(f"{path}: cannot be resolved ({exc})") from None
        bound = (self._bound_root(Path(folder).resolve()) or self.root) if self.root is not None \
            else Path(folder).resolve()
        if not real.is_relative_to(bound):
            raise AdapterError(
                f"{path} resolves to {real}, outside the pool directory {bound}: every file of an adapter "
                "must be inside the pool (copy it in instead of linking to it)"
            )
        if not real.is_file():
            raise AdapterError(f"{path}: not a regular file")
        return real

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns

    def _read_record(self, adapter_id: str, folder: Path, tasks: list[str], description: str) -> AdapterRecord:
        config_path = self._confined_file(folder, "adapter_config.json")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AdapterError(f"{folder}: no adapter_config.json (is this a PEFT adapter folder?)") from None
        except RecursionError:
            raise AdapterError(f"{config_path}: JSON nested too deeply; not an adapter config") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AdapterError(f"{config_path}: unreadable ({exc})") from exc
        if not isinstance(config, dict):
            raise AdapterError(f"{config_path}: expected a JSON object (a PEFT LoraConfig), got {type(config).__name__}")
        if str(config.get("peft_type", "LORA")).upper() != "LORA":
            raise IncompatibleAdapterError(f"{folder}: peft_type {config.get('peft_type')!r} is not LoRA")
        for flag in _UNSUPPORTED_FLAGS:
            if config.get(flag):
                raise IncompatibleAdapterError(f"{folder}: LoRA variant '{flag}' is not supported; use plain LoRA")
        if config.get("modules_to_save"):
            raise IncompatibleAdapterError(
                f"{folder}: modules_to_save {config['modules_to_save']} is not supported (LoRA factors only)"
            )
        alpha = _config_number(config_path, "lora_alpha", config.get("lora_alpha", config.get("r", 8)))
        alpha_pattern = config.get("alpha_pattern") or {}
        if not isinstance(alpha_pattern, dict):
            raise AdapterError(f"{config_path}: alpha_pattern must be an object of pattern -> alpha")
        patterns = []
        for pattern, value in alpha_pattern.items():
            try:
                compiled = re.compile(rf"(.*\.)?({pattern})$")
            except (re.error, RecursionError, OverflowError) as exc:
                raise AdapterError(
                    f"{config_path}: alpha_pattern key {pattern!r} is not a valid regular expression ({exc})"
                ) from None
            patterns.append((compiled, _config_number(config_path, f"alpha_pattern[{pattern!r}]", value)))
        use_rslora = config.get("use_rslora", False)
        if not isinstance(use_rslora, bool):
            raise AdapterError(f"{config_path}: use_rslora must be true or false, got {use_rslora!r}")

        shapes, fmt, weights_path = self._read_shapes(folder)
        modules: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, shape in shapes.items():
            m = _KEY_RE.match(key)
            if m is None:
                raise IncompatibleAdapterError(
                    f"{folder}: tensor '{key}' is not a LoRA A/B factor (embedding LoRA, DoRA or "
                    "extra modules are not supported)"
                )
            modules.setdefault(m["module"], {})[m["side"]] = tuple(shape)

        info: dict[str, tuple[int, int, int]] = {}
        scaling: dict[str, float] = {}
        for name, sides in modules.items():
            if set(sides) != {"A", "B"} or len(sides["A"]) != 2 or len(sides["B"]) != 2:
                raise AdapterError(f"{folder}: module '{name}' lacks a 2-D lora_A or lora_B tensor")
            (r, n_in), (n_out, r_b) = sides["A"], sides["B"]
            if r != r_b:
                raise AdapterError(f"{folder}: module '{name}' has lora_A rank {r} but lora_B rank {r_b}")
            if r < 1 or n_in < 1 or n_out < 1:
                raise AdapterError(f"{folder}: module '{name}' has rank {r} (in {n_in}, out {n_out}); a LoRA "
                                   "factor needs rank >= 1 and non-empty shapes")
            a = alpha
            for compiled, value in patterns:  # PEFT's rule: key matches a name suffix
                if compiled.match(name):
                    a = value
                    break
            info[name] = (r, n_in, n_out)
            scaling[name] = a / (r**0.5 if use_rslora else r)
        if not info:
            raise AdapterError(f"{folder}: the weights file holds no LoRA tensors")
        return AdapterRecord(
            id=adapter_id,
            path=folder,
            tasks=tasks,
            description=description,
            base_model=config.get("base_model_name_or_path") if isinstance(
                config.get("base_model_name_or_path"), str) else None,
            rank=max(r for r, _, _ in info.values()),
            modules=info,
            scaling=scaling,
            weights_format=fmt,
            files={"adapter_config.json": self._stat(config_path), weights_path.name: self._stat(weights_path)},
        )

    def _read_shapes(
        self, folder: Path
    ) -> tuple[dict[str, tuple[int, ...]], Literal["safetensors", "pickle"], Path]:
        """Shapes of every tensor, after checking dtypes and values (NaN/inf/absurd are refused)."""
        safe = self._confined_file(folder, _SAFE_WEIGHTS)
        if safe.exists():
            from safetensors import safe_open

            try:
                with safe_open(str(safe), framework="pt") as f:
                    shapes = {}
                    for k in f.keys():
                        sl = f.get_slice(k)
                        dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype())
                        if dtype is None:
                            raise AdapterError(
                                f"{safe}: tensor '{k}' is {sl.get_dtype()}; accepted dtypes: "
                                f"{', '.join(ACCEPTED_DTYPES)} (re-export the adapter in one of them)"
                            )
                        shapes[k] = tuple(sl.get_shape())
                        if _KEY_RE.match(k):
                            _check_values(safe, k, f.get_tensor(k))
                    return shapes, "safetensors", safe
            except AdapterError:
                raise
            except Exception as exc:  # safetensors raises its own error types for bad headers
                raise AdapterError(f"{safe}: corrupt or truncated safetensors file ({exc}); re-export it") from exc
        pickled = self._confined_file(folder, _PICKLE_WEIGHTS)
        if pickled.exists():
            if not self.allow_pickle:
                raise AdapterError(
                    f"{folder}: only a pickle file ({_PICKLE_WEIGHTS}) found; pickle can run code when "
                    "loaded. Convert it to safetensors, or pass allow_pickle=True if you trust it"
                )
            tensors = self._load_pickle(pickled)
            for k, v in tensors.items():
                _check_tensor(pickled, k, v)
            return {k: tuple(v.shape) for k, v in tensors.items()}, "pickle", pickled
        raise AdapterError(f"{folder}: no {_SAFE_WEIGHTS} found")

    @staticmethod
    def _load_pickle(path: Path) -> dict:
        import torch

        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterError(f"{path}: cannot load pickle weights ({exc})") from exc
        if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in tensors.items()):
            raise AdapterError(f"{path}: expected a dict of tensor name -> tensor")
        return tensors

    def _check(self, record: AdapterRecord) -> None:
        """Base id, target modules and shapes against the bound model (no-op until bind())."""
        if self._shapes is None:
            return
        if self.check_base_model:
            from .compatibility import base_model_problem

            problem = base_model_problem(record.id, record.base_model, self._model_base, self._model_fingerprint)
            if problem:
                raise IncompatibleAdapterError(problem)
        for name, (r, n_in, n_out) in record.modules.items():
            if name not in self._shapes:
                raise IncompatibleAdapterError(
                    f"adapter '{record.id}' targets module '{name}', which this base model does not have"
                )
            if self._shapes[name] != (n_in, n_out):
                raise IncompatibleAdapterError(
                    f"adapter '{record.id}' module '{name}' expects in/out {(n_in, n_out)}, the base model "
                    f"has {self._shapes[name]}: it was trained for another model size"
                )

    def _changed_on_disk(self, record: AdapterRecord) -> bool:
        for name, stat in record.files.items():
            try:
                if self._stat(record.path / name) != tuple(stat):
                    return True
            except OSError:
                return True
        return False

    def _reload_record(self, record: AdapterRecord) -> AdapterRecord:
        """Register an adapter again from its folder (its files changed since registration)."""
        fresh = self._read_record(record.id, record.path, list(record.tasks), record.description)
        self._check(fresh)
        self._revision += 1
        fresh = fresh.model_copy(update={"revision": self._revision})
        self._records[record.id] = fresh
        return fresh

    def _load(self, record: AdapterRecord) -> AdapterWeights:
        import torch

        if self._changed_on_disk(record):
            # Replaced since registration (e.g. retrained with another rank): read its config and
            # header again, so the tensors are never used with the old record's rank and scaling.
            record = self._reload_record(record)
        if record.weights_format == "pickle":
            tensors = self._load_pickle(self._confined_file(record.path, _PICKLE_WEIGHTS))
        else:
            from safetensors.torch import load_file

            path = self._confined_file(record.path, _SAFE_WEIGHTS)
            try:
                tensors = load_file(str(path), device="cpu")
            except Exception as exc:
                raise AdapterError(f"{path}: corrupt or truncated safetensors file ({exc}); re-export it") from exc
        dtype = self._dtype or torch.float32
        factors: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            m = _KEY_RE.match(key)
            if m is not None:
                _check_tensor(record.path, key, tensor)
                factors.setdefault(m["module"], {})[m["side"]] = tensor.to(device=self._device, dtype=dtype)
        shapes = {name: (f["A"].shape[0] if "A" in f else -1, f["A"].shape[1] if "A" in f else -1,
                         f["B"].shape[0] if "B" in f else -1) for name, f in factors.items()}
        if shapes != {name: tuple(v) for name, v in record.modules.items()}:
            raise AdapterError(f"{record.path}: weights changed on disk while being read; try again "
                               "(or register the adapter again)")
        modules = {
            name: LoRAModuleWeights(A=f["A"].contiguous(), B=f["B"].contiguous(), scaling=record.scaling[name])
            for name, f in factors.items()
        }
        return AdapterWeights(adapter_id=record.id, revision=record.revision, modules=modules)


def _config_number(path: Path, name: str, value) -> float:
    """A finite real number from an adapter config (not a bool, a string or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AdapterError(f"{path}: {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
        raise AdapterError(f"{path}: {name} must be a finite number of reasonable size, got {value!r}")
    return value


def _check_tensor(path: Path, key: str, tensor) -> None:
    import torch

    names = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in names:
        got = getattr(tensor, "dtype", type(tensor).__name__)
        raise AdapterError(f"{path}: tensor '{key}' is {got}; accepted dtypes: {', '.join(ACCEPTED_DTYPES)} "
                           "(re-export the adapter in one of them)")
    _check_values(path, key, tensor)


def _check_values(path: Path, key: str, tensor) -> None:
    """Refuse NaN, inf and absurd magnitudes: such an adapter silently wrecks every output."""
    import torch

    if tensor.numel() == 0:
        return
    t = tensor.float()
    if not bool(torch.isfinite(t).all()):
        raise AdapterError(f"{path}: tensor '{key}' holds NaN or infinite values; the adapter is broken "
                           "(re-train or re-export it)")
    peak = float(t.abs().max())
    if peak > MAX_ABS_VALUE:
        raise AdapterError(f"{path}: tensor '{key}' holds values up to {peak:.3g} (more than {MAX_ABS_VALUE:g} "
                           "in absolute value); the adapter is broken (re-train or re-export it)")
