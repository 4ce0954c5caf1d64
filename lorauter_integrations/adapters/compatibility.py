"""Is an adapter made for this base model? Names first, then the architecture fingerprint.

An adapter's ``base_model_name_or_path`` is whatever its trainer loaded: a Hub id or some local
folder (a copy of the model, a fine-tuned checkpoint...). Names alone cannot decide, so:

1. the same id, or the same last path component (``org/Model`` and ``/models/Model``): the same model;
2. otherwise, when the adapter's base is a local folder with a ``config.json``, its architecture
   fingerprint (`config_fingerprint`: architecture, model type and every size that fixes weight
   shapes) is compared with the loaded model's: equal fingerprints are the same architecture;
3. otherwise it is refused, naming the adapter and the opt-out (``check_base_model=False``: trust
   the module names and shapes, which are always checked).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: Config keys that fix the architecture and the shapes of the weights.
FINGERPRINT_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "n_embd", "n_layer",
                    "n_head", "n_inner", "tie_word_embeddings")


def config_fingerprint(config: Any) -> str:
    """A short hash of the architecture-defining fields of a transformers config (object or dict)."""
    data = config if isinstance(config, dict) else config.to_dict()
    picked = {k: data.get(k) for k in FINGERPRINT_KEYS if data.get(k) is not None}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _last_component(name: str) -> str:
    return name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].casefold()


def same_name(adapter_base: str, model_base: str) -> bool:
    """The same id, or the same last path component (case-folded)."""
    return adapter_base == model_base or _last_component(adapter_base) == _last_component(model_base)


def local_config_fingerprint(base: str) -> str | None:
    """The fingerprint of a local model folder's ``config.json`` (None when there is none)."""
    path = Path(base) / "config.json"
    try:
        return config_fingerprint(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError):
        return None


def base_model_problem(adapter_id: str, adapter_base: str | None, model_base: str | None,
                       model_fingerprint: str | None) -> str | None:
    """Why ``adapter_id`` is not for the loaded model, or None when it is (or cannot be told)."""
    if not adapter_base or not model_base or same_name(adapter_base, model_base):
        return None
    fingerprint = local_config_fingerprint(adapter_base)
    if fingerprint is not None and model_fingerprint is not None:
        if fingerprint == model_fingerprint:
            return None
        return (f"adapter '{adapter_id}' was trained on '{adapter_base}', whose architecture (config.json) differs "
                f"from the loaded '{model_base}'")
    return (f"adapter '{adapter_id}' was trained for '{adapter_base}', not for the loaded '{model_base}'; if it is "
            "the same model under another name, pass check_base_model=False to the AdapterPool (module names and "
            "shapes are still checked)")


__all__ = ["FINGERPRINT_KEYS", "base_model_problem", "config_fingerprint", "local_config_fingerprint", "same_name"]
