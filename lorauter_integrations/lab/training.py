"""Train the demo pool: one PEFT LoRA adapter per task, from that task's validation examples.

Each example is rendered exactly as the engine renders a prompt at inference (the tokenizer's
chat template, one user message = ``inputs``, generation prompt appended); the loss covers only
the target tokens and the end-of-turn token, so an adapter learns both the answer format and
where to stop. Training is resumable: a finished adapter folder is skipped, a new one is written
to a hidden temporary folder and renamed into place, and the pool manifest (``adapters.json``)
is rewritten atomically after every adapter.

>>> from lorauter_integrations.lab.training import train_adapters
>>> train_adapters("data/flan/validation.jsonl", ["sst2", "rte"], "my_pool")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ..data import TaskSet, load_tasks
from ..errors import AdapterError, DatasetError, InvalidInputError
from ..engine.models import DEMO_MODEL, LoadedModel, load_base_model

MANIFEST = "adapters.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
IGNORE_INDEX = -100  # label value that torch's cross-entropy skips


class LoraTrainingConfig(BaseModel):
    """Every knob of adapter training, as one value (defaults: the shipped demo pool)."""

    model_config = ConfigDict(frozen=True)

    r: int = Field(default=8, ge=1, description="LoRA rank.")
    alpha: int = Field(default=16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(
        default=("q_proj", "v_proj"), description="Linear layers that receive a LoRA update."
    )
    epochs: int = Field(default=3, ge=1, description="Passes over the task's examples.")
    learning_rate: float = Field(default=1.5e-3, gt=0, description="AdamW peak learning rate.")
    batch_size: int = Field(default=2, ge=1, description="Examples per optimiser step.")
    max_length: int = Field(
        default=256, ge=16, description="Tokens per example; longer prompts lose their beginning."
    )
    seed: int = Field(default=0, description="Seeds LoRA init, dropout and example order.")


class TrainingReport(BaseModel):
    """What happened to one adapter: trained (with its loss curve ends and time) or skipped."""

    adapter_id: str
    path: str
    skipped: bool
    examples: int = 0
    steps: int = 0
    first_loss: float | None = None
    last_epoch_loss: float | None = None
    seconds: float = 0.0


# --- prompt rendering -------------------------------------------------------------------------


def render_prompt(tokenizer, inputs: str) -> str:
    """The text the model sees before answering ``inputs``: the chat template with one user turn.

    Falls back to the raw text for tokenizers without a chat template, as the engine does.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": inputs}], tokenize=False, add_generation_prompt=True
        )
    return inputs


def encode_example(tokenizer, inputs: str, targets: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example; labels are ``IGNORE_INDEX`` on the prompt.

    Prompt and answer are tokenised separately, as at inference (the engine tokenises the prompt
    and the model continues it). The answer ends with the end-of-turn token so that generation
    learns to stop. An over-long example keeps its answer and the end of its prompt (the
    question and options usually come last in Flan templates).
    """
    prompt_ids = tokenizer(render_prompt(tokenizer, inputs), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token or ""
    answer_ids = tokenizer(targets + eos, add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[: max_length // 2] if len(answer_ids) > max_length // 2 else answer_ids
    room = max_length - len(answer_ids)
    if len(prompt_ids) > room:
        prompt_ids = prompt_ids[-room:]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def answer_nll(model, input_ids, attention_mask, labels):
    """Per-row summed negative log-likelihood of the labelled tokens, and their count.

    The vocabulary projection runs only on the positions that predict an answer token: with a
    49k vocabulary and answers much shorter than prompts this saves about a fifth of the work of
    a training step (and of a scoring pass in `mapping`).
    """
    import torch

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token_nll = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    nll = torch.zeros(labels.shape[0], dtype=token_nll.dtype, device=token_nll.device)
    nll = nll.index_add(0, rows, token_nll)
    return nll, keep.sum(dim=1)


def _collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device), labels.to(device)


# --- manifest ---------------------------------------------------------------------------------


def read_manifest(pool_dir: str | Path) -> dict:
    """The pool manifest as a dict (``{"base_model": ..., "adapters": [...]}``), empty if absent."""
    path = Path(pool_dir) / MANIFEST
    if not path.exists():
        return {"base_model": None, "adapters": []}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}; fix or delete the manifest") from exc
    manifest.setdefault("adapters", [])
    return manifest


def write_manifest(pool_dir: str | Path, manifest: dict) -> Path:
    """Write the manifest atomically (a crash never leaves a half-written file)."""
    path = Path(pool_dir) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    manifest = dict(manifest)
    manifest["adapters"] = sorted(manifest.get("adapters", []), key=lambda a: a["id"])
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _register(pool_dir: Path, base_model: str, entry: dict) -> None:
    manifest = read_manifest(pool_dir)
    if manifest.get("base_model") not in (None, base_model):
        raise AdapterError(
            f"{pool_dir / MANIFEST} is for base model {manifest['base_model']!r}, not {base_model!r}; "
            "train into another folder"
        )
    manifest["base_model"] = base_model
    manifest["adapters"] = [a for a in manifest["adapters"] if a["id"] != entry["id"]] + [entry]
    write_manifest(pool_dir, manifest)


def adapter_is_complete(folder: str | Path) -> bool:
    """True when ``folder`` holds a finished adapter (config and weights)."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file()


# --- training ---------------------------------------------------------------------------------


def train_adapter(
    loaded: LoadedModel,
    task: TaskSet,
    out_dir: str | Path,
    config: LoraTrainingConfig = LoraTrainingConfig(),
    *,
    progress: bool = True,
) -> TrainingReport:
    """Train one LoRA adapter on ``task``'s examples and save it to ``out_dir`` (fp16 safetensors).

    The base model in ``loaded`` is left exactly as it was (the LoRA layers are unloaded after
    training), so one loaded model can train a whole pool.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    examples = [e for e in task.examples if e.targets is not None]
    if not examples:
        raise DatasetError(f"task '{task.task}' has no example with `targets`: nothing to train on")
    tok = loaded.tokenizer
    encoded = [encode_example(tok, e.inputs, e.targets, config.max_length) for e in examples]

    torch.manual_seed(config.seed)  # LoRA A init and dropout masks
    order_rng = random.Random(config.seed)
    lora_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(loaded.model, lora_config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    steps_per_epoch = -(-len(encoded) // config.batch_size)
    total = steps_per_epoch * config.epochs
    # Linear decay to zero: with a few dozen steps there is no room for a warm-up phase.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / total)

    report = TrainingReport(adapter_id=task.task, path=str(out_dir), skipped=False, examples=len(encoded))
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total, desc=f"train {task.task}", unit="step", disable=not progress, leave=False)
    try:
        for _epoch in range(config.epochs):
            order = list(range(len(encoded)))
            order_rng.shuffle(order)
            epoch_losses = []
            for s in range(0, len(order), config.batch_size):
                batch = [encoded[i] for i in order[s : s + config.batch_size]]
                input_ids, mask, labels = _collate(batch, tok.pad_token_id, loaded.device)
                nll, count = answer_nll(model, input_ids, mask, labels)
                loss = nll.sum() / count.sum()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                scheduler.step()
                optimiser.zero_grad(set_to_none=True)
                epoch_losses.append(loss.item())
                if report.first_loss is None:
                    report.first_loss = loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            report.last_epoch_loss = sum(epoch_losses) / len(epoch_losses)
        report.steps = total

        tmp = out_dir.with_name(f".{out_dir.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        # PEFT records the loaded folder as the base; the manifest and the pool's compatibility
        # check need the model's public id instead.
        model.peft_config["default"].base_model_name_or_path = loaded.base_model_id
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        weights = load_file(tmp / ADAPTER_WEIGHTS)
        save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()},
                  tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub says nothing useful
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        bar.close()
        model.eval()
        # Remove the LoRA layers: the caller's base model must be untouched.
        loaded.model = model.unload()
    report.seconds = round(time.perf_counter() - start, 1)
    return report


def train_adapters(
    validation: str | Path,
    tasks: Sequence[str] | None,
    out: str | Path,
    config: LoraTrainingConfig = LoraTrainingConfig(),
    *,
    base_model: str | LoadedModel = DEMO_MODEL,
    progress: bool = True,
    on_report: Callable[[TrainingReport], None] | None = None,
) -> list[TrainingReport]:
    """Train one adapter per task of ``validation`` (all tasks when ``tasks`` is None) into ``out``.

    Adapters already complete in ``out`` are skipped (re-run after an interruption to finish the
    pool). Each new adapter is registered in ``out/adapters.json`` with its own task.
    """
    all_tasks = {t.task: t for t in load_tasks(validation)}
    wanted = list(all_tasks) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [t for t in wanted if t not in all_tasks]
    if unknown:
        raise InvalidInputError(
            f"unknown task(s) {', '.join(unknown)} in {validation}; known: {', '.join(all_tasks)}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded: LoadedModel | None = base_model if isinstance(base_model, LoadedModel) else None
    reports = []
    for name in tqdm(wanted, desc="adapters", unit="adapter", disable=not progress):
        folder = out / name
        if adapter_is_complete(folder):
            report = TrainingReport(adapter_id=name, path=str(folder), skipped=True)
            if not any(a["id"] == name for a in read_manifest(out)["adapters"]):
                # Interrupted between the folder rename and the manifest write.
                cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
                _register(out, cfg["base_model_name_or_path"], {
                    "id": name, "path": name, "tasks": [name], "trained_on": [name],
                    "description": f"LoRA adapter trained on the validation examples of {name}",
                })
        else:
            if loaded is None:  # load lazily: a fully trained pool costs no model load
                loaded = load_base_model(base_model)
            task = all_tasks[name]
            report = train_adapter(loaded, task, folder, config, progress=progress)
            _register(out, loaded.base_model_id, {
                "id": name,
                "path": name,
                "tasks": [name],
                "trained_on": [name],
                "description": (
                    f"LoRA r={config.r} on {'/'.join(config.target_modules)}, trained on the "
                    f"{report.examples} validation examples of {name}"
                    + (f" ({task.domain})" if task.domain else "")
                ),
            })
        reports.append(report)
        if on_report is not None:
            on_report(report)
    return reports
