"""Shared fixtures: a tiny random-weight Llama with a real tokenizer, and real PEFT LoRA folders.

Everything is built offline in milliseconds, so engine and composition tests run without the demo
model. ``make_adapter`` writes genuine PEFT adapter folders (``adapter_config.json`` +
``adapter_model.safetensors`` via ``PeftModel.save_pretrained``) with random non-zero factors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from tiny_model import TINY_BASE_ID, TINY_CONTEXT, make_tiny_model  # noqa: E402,F401
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Is this review positive or negative? The film was a joy from start to finish.",
    "Translate to French: the cat sits on the mat.",
    "Answer the question: what is the capital of France? Paris.",
    "Summarize: the committee met on Tuesday and agreed on the budget for next year.",
    "Premise: a man plays guitar. Hypothesis: a person makes music. Entailment? yes no maybe",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}-_/\\",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A small byte-level BPE tokenizer with a ChatML template, trained offline on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


@pytest.fixture
def tiny_loaded(tiny_tokenizer):
    """A fresh `LoadedModel` around the tiny random Llama (function scope: tests may mutate it)."""
    from lorauter_integrations.engine.models import LoadedModel

    model = make_tiny_model(len(tiny_tokenizer))
    return LoadedModel(model=model, tokenizer=tiny_tokenizer, base_model_id=TINY_BASE_ID, device="cpu")


@pytest.fixture
def make_adapter(tmp_path, tiny_tokenizer):
    """Factory: ``make_adapter(name, r=4, targets=("q_proj", "v_proj"), ...) -> Path`` of a real
    PEFT LoRA folder for the tiny model (random non-zero A and B, so every adapter changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model

    def make(
        name: str,
        *,
        r: int = 4,
        alpha: int = 8,
        targets: tuple[str, ...] = ("q_proj", "v_proj"),
        seed: int | None = None,
        base_model: str = TINY_BASE_ID,
        root: Path | None = None,
        hidden_size: int | None = None,
    ) -> Path:
        base = make_tiny_model(len(tiny_tokenizer))
        if hidden_size is not None:  # a model of another size: shapes will not fit
            from transformers import LlamaConfig, LlamaForCausalLM

            cfg = LlamaConfig(**{**base.config.to_dict(), "hidden_size": hidden_size})
            base = LlamaForCausalLM(cfg)
        peft_model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets)))
        gen = torch.Generator().manual_seed(seed if seed is not None else abs(hash(name)) % 2**31)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_" in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        peft_model.peft_config["default"].base_model_name_or_path = base_model
        folder = (root or tmp_path / "pool") / name
        peft_model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
        return folder

    return make


@pytest.fixture
def tiny_pool_dir(tmp_path, make_adapter):
    """A pool directory with a manifest: adapters a, b (r=4, q/v), c (r=2, q/k/v)."""
    root = tmp_path / "pool"
    make_adapter("a", r=4, seed=1, root=root)
    make_adapter("b", r=4, seed=2, root=root)
    make_adapter("c", r=2, seed=3, targets=("q_proj", "k_proj", "v_proj"), root=root)
    manifest = {
        "base_model": TINY_BASE_ID,
        "adapters": [
            {"id": "a", "path": "a", "tasks": ["task_a", "task_a2"], "description": "adapter a"},
            {"id": "b", "path": "b", "tasks": ["task_b"], "description": "adapter b"},
            {"id": "c", "path": "c", "tasks": ["task_c"], "description": "adapter c"},
        ],
    }
    (root / "adapters.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real `chroma run` server on 127.0.0.1 for the whole session (started on first use)."""
    from rel_support import start_chroma_server

    root = tmp_path_factory.mktemp("chroma-server")
    server = start_chroma_server(root / "data", root / "server.log")
    yield server
    server.stop()


# --- the bundled Flan data: every task, and a slice of eight tasks (two per domain, four domains)
@pytest.fixture(scope="session")
def all_tasks():
    """Every bundled Flan validation task, by id."""
    from lorauter_integrations.data import bundled_data_dir, load_tasks

    return {t.task: t for t in load_tasks(bundled_data_dir() / "validation.jsonl")}


@pytest.fixture(scope="session")
def slice_tasks(all_tasks):
    """Eight Flan tasks (two per domain for four domains), eight examples each: indexed in a second."""
    from rel_support import SLICE

    return [all_tasks[name].model_copy(update={"examples": all_tasks[name].examples[:8]}) for name in SLICE]


@pytest.fixture(scope="session")
def flan_tasks(slice_tasks):
    return slice_tasks


@pytest.fixture(scope="session")
def flan_queries():
    """The test queries of the slice's tasks."""
    from lorauter_integrations.data import bundled_data_dir, read_jsonl
    from rel_support import SLICE

    return [q for q in read_jsonl(bundled_data_dir() / "test_dev.jsonl") if q.task in SLICE]


_store_names = __import__("itertools").count()


@pytest.fixture
def store_name() -> str:
    """A collection-name prefix no other test of this session uses."""
    return f"rel{os.getpid()}x{next(_store_names)}"


# --- the tiny routed engine: the random Llama, real adapters a/b/c and a real task store of three
# tasks (sentiment, translation, question answering); its text is random, so tests on it check
# plumbing (routes, metadata, batching, callbacks), never wording.
@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A real TaskStore of three tasks (indexed once per session)."""
    import json

    from lc_support import TASKS
    from lorauter_integrations.store import TaskStore

    root = tmp_path_factory.mktemp("lc_store")
    path = root / "validation.jsonl"
    with path.open("w") as f:
        for task, inputs in TASKS.items():
            for text in inputs:
                f.write(json.dumps({"task": task, "inputs": text, "targets": "x", "domain": task}) + "\n")
    store = TaskStore(root / "store")
    store.index_file(path, progress=False)
    return store


@pytest.fixture
def tiny_engine(tiny_loaded, tiny_pool_dir, tiny_store):
    """A RoutedModel over the tiny random Llama, adapters a/b/c, routed by the real lorauter router."""
    from lorauter_integrations.engine import RoutedModel
    from lorauter_integrations.adapters.pool import AdapterPool

    pool = AdapterPool.from_dir(tiny_pool_dir)
    return RoutedModel(tiny_loaded, pool=pool, store=tiny_store)
