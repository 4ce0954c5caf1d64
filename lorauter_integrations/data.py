"""Task datasets: JSONL records of `task`, `inputs`, optional `targets`, `domain`, `metric`."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import DatasetError

Metric = Literal["em", "bleu", "rouge"]


class Example(BaseModel):
    """One JSONL record."""

    model_config = ConfigDict(extra="ignore", strict=True)

    task: str = Field(min_length=1, description="Task id.")
    inputs: str = Field(description="The prompt.")
    targets: str | None = Field(default=None, description="Reference answer.")
    domain: str | None = Field(default=None, description="Domain of the task.")
    metric: Metric = Field(default="em", description="How answers are scored.")

    @field_validator("inputs")
    @classmethod
    def _inputs_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("inputs is empty")
        return v

    @field_validator("task")
    @classmethod
    def _task_is_id(cls, v: str) -> str:
        if v != v.strip() or any(ord(c) < 32 for c in v):
            raise ValueError("task id has surrounding spaces or control characters")
        return v


class TaskSet(BaseModel):
    """A task's validation set: its examples plus the labels shared by all of them."""

    task: str
    domain: str | None = None
    metric: Metric = "em"
    examples: list[Example]

    @property
    def inputs(self) -> list[str]:
        return [e.inputs for e in self.examples]


def read_jsonl(path: str | Path) -> list[Example]:
    """Read and validate a JSONL file; raise `DatasetError` naming the line of the first fault."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from exc
    examples: list[Example] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            raise DatasetError(f"{path}:{lineno}: JSON nested too deeply; a record is one flat object") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        try:
            examples.append(Example.model_validate(obj))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "record"
            raise DatasetError(f"{path}:{lineno}: field '{field}': {err['msg']}") from exc
    if not examples:
        raise DatasetError(f"{path}: no records (an empty validation set cannot be indexed)")
    return examples


def group_tasks(examples: Iterable[Example]) -> list[TaskSet]:
    """Group examples by task, in first-seen order; a task's domain/metric must be consistent."""
    groups: OrderedDict[str, list[Example]] = OrderedDict()
    for ex in examples:
        groups.setdefault(ex.task, []).append(ex)
    out = []
    for task, exs in groups.items():
        domains = {e.domain for e in exs}
        metrics = {e.metric for e in exs}
        if len(domains) > 1 or len(metrics) > 1:
            raise DatasetError(
                f"task '{task}' has inconsistent labels: domains {sorted(map(str, domains))}, "
                f"metrics {sorted(metrics)}; one task has one domain and one metric"
            )
        out.append(TaskSet(task=task, domain=exs[0].domain, metric=exs[0].metric, examples=exs))
    return out


def load_tasks(path: str | Path) -> list[TaskSet]:
    """`read_jsonl` then `group_tasks`."""
    return group_tasks(read_jsonl(path))


def bundled_data_dir() -> Path:
    """The Flan data shipped in the package (``lorauter_integrations/_data/flan``, inside the wheel;
    ``data/flan`` in the repository is a link to it)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "_data" / "flan", here.parent / "data" / "flan"):
        if (cand / "validation.jsonl").exists():
            return cand
    raise DatasetError("the bundled Flan data was not found; pass --validation FILE explicitly")
