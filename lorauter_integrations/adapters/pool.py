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
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from ..errors import AdapterError, IncompatibleAdapterError, UnknownAdapterError

MANIFEST = "adapters.json"
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

    def __init__(self, root: str | Path | None = None, *, allow_pickle: bool = False, max_resident: int = 64):
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
        if manifest.exists():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise AdapterError(f"{manifest}: not a readable JSON manifest ({exc})") from exc
            if not isinstance(data, dict) or not isinstance(data.get("adapters"), list):
                raise AdapterError(f"{manifest}: expected {{'base_model': ..., 'adapters': [...]}}")
            pool.base_model = data.get("base_model")
            for entry in data["adapters"]:
                if not isinstance(entry, dict) or "id" not in entry:
                    raise AdapterError(f"{manifest}: every adapter entry needs an 'id' ({entry!r})")
                pool.register(
                    entry["id"],
                    entry.get("path", entry["id"]),
                    tasks=entry.get("tasks", ()),
                    description=entry.get("description", ""),
                )
        else:
            for sub in sorted(p for p in root_path.iterdir() if (p / "adapter_config.json").exists()):
                pool.register(sub.name, sub.name)
        return pool

    def bind(self, model, base_model_id: str | None = None) -> "AdapterPool":
        """Check every adapter against ``model`` and load future weights onto its device and dtype.

        Raises `IncompatibleAdapterError` naming the first adapter that does not fit. Adapters
        registered later are checked at registration.
        """
        param = next(model.parameters())
        with self._lock:
            self._model_base = base_model_id
            self._shapes = lora_target_shapes(model)
            self._device, self._dtype = param.device, param.dtype
            for record in self._records.values():
                self._check(record)
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
        if self.root is None:
            folder = raw.resolve()
        else:
            folder = (raw if raw.is_absolute() else self.root / raw).resolve()
            if not folder.is_relative_to(self.root):
                raise AdapterError(
                    f"adapter path {str(path)!r} escapes the pool directory {self.root}: "
                    "keep adapters inside the pool"
                )
        if not folder.is_dir():
            raise AdapterError(f"adapter folder not found: {folder}")
        return folder

    def _read_record(self, adapter_id: str, folder: Path, tasks: list[str], description: str) -> AdapterRecord:
        config_path = folder / "adapter_config.json"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AdapterError(f"{folder}: no adapter_config.json (is this a PEFT adapter folder?)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterError(f"{config_path}: unreadable ({exc})") from exc
        if str(config.get("peft_type", "LORA")).upper() != "LORA":
            raise IncompatibleAdapterError(f"{folder}: peft_type {config.get('peft_type')!r} is not LoRA")
        for flag in _UNSUPPORTED_FLAGS:
            if config.get(flag):
                raise IncompatibleAdapterError(f"{folder}: LoRA variant '{flag}' is not supported; use plain LoRA")
        if config.get("modules_to_save"):
            raise IncompatibleAdapterError(
                f"{folder}: modules_to_save {config['modules_to_save']} is not supported (LoRA factors only)"
            )

        shapes, fmt = self._read_shapes(folder)
        modules: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, shape in shapes.items():
            m = _KEY_RE.match(key)
            if m is None:
                raise IncompatibleAdapterError(
                    f"{folder}: tensor '{key}' is not a LoRA A/B factor (embedding LoRA, DoRA or "
                    "extra modules are not supported)"
                )
            modules.setdefault(m["module"], {})[m["side"]] = tuple(shape)

        alpha = float(config.get("lora_alpha", config.get("r", 8)))
        alpha_pattern = config.get("alpha_pattern") or {}
        use_rslora = bool(config.get("use_rslora", False))
        info: dict[str, tuple[int, int, int]] = {}
        scaling: dict[str, float] = {}
        for name, sides in modules.items():
            if set(sides) != {"A", "B"} or len(sides["A"]) != 2 or len(sides["B"]) != 2:
                raise AdapterError(f"{folder}: module '{name}' lacks a 2-D lora_A or lora_B tensor")
            (r, n_in), (n_out, r_b) = sides["A"], sides["B"]
            if r != r_b:
                raise AdapterError(f"{folder}: module '{name}' has lora_A rank {r} but lora_B rank {r_b}")
            a = alpha
            for pattern, value in alpha_pattern.items():  # PEFT's rule: key matches a name suffix
                if re.match(rf"(.*\.)?({pattern})$", name):
                    a = float(value)
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
            base_model=config.get("base_model_name_or_path"),
            rank=max(r for r, _, _ in info.values()),
            modules=info,
            scaling=scaling,
            weights_format=fmt,
        )

    def _read_shapes(self, folder: Path) -> tuple[dict[str, tuple[int, ...]], Literal["safetensors", "pickle"]]:
        safe = folder / _SAFE_WEIGHTS
        if safe.exists():
            from safetensors import safe_open

            try:
                with safe_open(str(safe), framework="pt") as f:
                    return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, "safetensors"
            except Exception as exc:  # safetensors raises its own error types for bad headers
                raise AdapterError(f"{safe}: corrupt or truncated safetensors file ({exc}); re-export it") from exc
        if (folder / _PICKLE_WEIGHTS).exists():
            if not self.allow_pickle:
                raise AdapterError(
                    f"{folder}: only a pickle file ({_PICKLE_WEIGHTS}) found; pickle can run code when "
                    "loaded. Convert it to safetensors, or pass allow_pickle=True if you trust it"
                )
            return {k: tuple(v.shape) for k, v in self._load_pickle(folder / _PICKLE_WEIGHTS).items()}, "pickle"
        raise AdapterError(f"{folder}: no {_SAFE_WEIGHTS} found")

    @staticmethod
    def _load_pickle(path: Path) -> dict:
        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterError(f"{path}: cannot load pickle weights ({exc})") from exc

    def _check(self, record: AdapterRecord) -> None:
        """Base id, target modules and shapes against the bound model (no-op until bind())."""
        if self._shapes is None:
            return
        if record.base_model and self._model_base and not _same_base(record.base_model, self._model_base):
            raise IncompatibleAdapterError(
                f"adapter '{record.id}' was trained for '{record.base_model}', not for the loaded "
                f"'{self._model_base}': load that base model or use adapters trained for this one"
            )
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

    def _load(self, record: AdapterRecord) -> AdapterWeights:
        import torch

        if record.weights_format == "pickle":
            tensors = self._load_pickle(record.path / _PICKLE_WEIGHTS)
        else:
            from safetensors.torch import load_file

            path = record.path / _SAFE_WEIGHTS
            try:
                tensors = load_file(str(path), device="cpu")
            except Exception as exc:
                raise AdapterError(f"{path}: corrupt or truncated safetensors file ({exc}); re-export it") from exc
        dtype = self._dtype or torch.float32
        factors: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            m = _KEY_RE.match(key)
            if m is not None:
                factors.setdefault(m["module"], {})[m["side"]] = tensor.to(device=self._device, dtype=dtype)
        if set(factors) != set(record.modules):
            raise AdapterError(f"{record.path}: weights changed on disk since registration; register it again")
        modules = {
            name: LoRAModuleWeights(A=f["A"].contiguous(), B=f["B"].contiguous(), scaling=record.scaling[name])
            for name, f in factors.items()
        }
        return AdapterWeights(adapter_id=record.id, revision=record.revision, modules=modules)
