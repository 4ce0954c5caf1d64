"""Adapter training on the tiny random Llama: prompts, loss masking, files, resumability."""

from __future__ import annotations

import json

import pytest
import torch

from lorauter_integrations.errors import InvalidInputError
from lorauter_integrations.lab.training import (
    IGNORE_INDEX,
    LoraTrainingConfig,
    _collate,
    answer_nll,
    encode_example,
    render_prompt,
    train_adapters,
)

FAST = LoraTrainingConfig(epochs=1, batch_size=2, max_length=64)


@pytest.fixture
def validation_file(tmp_path):
    rows = [{"task": "greet", "domain": "chat", "metric": "em", "inputs": f"Say hi number {i}", "targets": "hi"}
            for i in range(4)]
    rows += [{"task": "count", "domain": "math", "metric": "em", "inputs": f"Count to {i}", "targets": "0 1 2"}
             for i in range(4)]
    path = tmp_path / "validation.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_prompt_is_the_chat_template_with_one_user_turn(tiny_tokenizer):
    assert render_prompt(tiny_tokenizer, "Hello") == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def test_only_answer_tokens_and_end_of_turn_are_labelled(tiny_tokenizer):
    ids, labels = encode_example(tiny_tokenizer, "Translate to French: the cat", "le chat", max_length=256)
    answer = tiny_tokenizer("le chat" + tiny_tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    n_prompt = len(ids) - len(answer)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] == answer
    assert answer[-1] == tiny_tokenizer.eos_token_id


def test_an_overlong_example_keeps_its_answer_and_the_end_of_its_prompt(tiny_tokenizer):
    ids, labels = encode_example(tiny_tokenizer, "word " * 200 + "QUESTION", "yes", max_length=32)
    assert len(ids) == len(labels) == 32
    assert tiny_tokenizer.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]).startswith("yes")
    assert "assistant" in tiny_tokenizer.decode(ids)


def test_answer_nll_equals_the_transformers_loss(tiny_loaded):
    tok = tiny_loaded.tokenizer
    batch = [encode_example(tok, "Is this review positive?", "yes", 64),
             encode_example(tok, "Translate to French: the cat sits on the mat", "le chat", 64)]
    ids, mask, labels = _collate(batch, tok.pad_token_id, "cpu")
    with torch.no_grad():
        nll, count = answer_nll(tiny_loaded.model, ids, mask, labels)
        reference = tiny_loaded.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(nll.sum() / count.sum(), reference, atol=1e-5)
    assert count.tolist() == [sum(lab != IGNORE_INDEX for lab in row) for _, row in batch]


def test_training_writes_fp16_peft_folders_and_the_manifest(tiny_loaded, validation_file, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "pool"
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    reports = train_adapters(validation_file, ["greet", "count"], out, FAST, base_model=tiny_loaded, progress=False)
    assert [r.skipped for r in reports] == [False, False]
    for name in ("greet", "count"):
        weights = load_file(out / name / "adapter_model.safetensors")
        assert weights and all(t.dtype == torch.float16 for t in weights.values())
        config = json.loads((out / name / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "tiny-random-llama"
        assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (8, 16, ["q_proj", "v_proj"])
    manifest = json.loads((out / "adapters.json").read_text())
    assert manifest["base_model"] == "tiny-random-llama"
    assert {a["id"]: a["tasks"] for a in manifest["adapters"]} == {"count": ["count"], "greet": ["greet"]}
    # The base model comes back exactly as it was (LoRA layers unloaded).
    after = tiny_loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not list(out.glob(".*.partial"))


def test_a_rerun_skips_complete_adapters_and_finishes_the_rest(tiny_loaded, validation_file, tmp_path):
    out = tmp_path / "pool"
    train_adapters(validation_file, ["greet"], out, FAST, base_model=tiny_loaded, progress=False)
    stamp = (out / "greet" / "adapter_model.safetensors").stat().st_mtime_ns
    reports = train_adapters(validation_file, ["greet", "count"], out, FAST, base_model=tiny_loaded, progress=False)
    assert [(r.adapter_id, r.skipped) for r in reports] == [("greet", True), ("count", False)]
    assert (out / "greet" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_training_reduces_the_answer_loss(tiny_loaded, validation_file, tmp_path):
    config = LoraTrainingConfig(epochs=8, batch_size=4, learning_rate=1e-2, max_length=64)
    [report] = train_adapters(validation_file, ["greet"], tmp_path / "pool", config, base_model=tiny_loaded,
                              progress=False)
    assert report.last_epoch_loss < report.first_loss


def test_an_unknown_task_is_refused_before_any_training(tiny_loaded, validation_file, tmp_path):
    with pytest.raises(InvalidInputError, match="nope"):
        train_adapters(validation_file, ["greet", "nope"], tmp_path / "pool", FAST, base_model=tiny_loaded)
    assert not (tmp_path / "pool" / "greet").exists()
