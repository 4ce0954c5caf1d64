"""The one schema of a pool's ``adapters.json``, read with typed errors.

::

    {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
     "adapters": [{"id": "sst2", "path": "sst2", "tasks": ["sst2"], "description": "..."}]}

``path`` defaults to the id, ``tasks`` to none, ``description`` to ""; other keys (``trained_on``,
...) are kept as they are. Types are strict: ``"tasks": "sst2"`` is refused (it is not a list of
tasks s, t, 2), so are ``"path": null``, non-string tasks, repeated adapter ids and JSON nested
deeper than any manifest needs. Every problem is a `ManifestError` naming the file, the entry and
the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from ..errors import ManifestError

MANIFEST = "adapters.json"
#: A manifest of 100,000 adapters is ~20 MB; anything far larger is not a manifest.
MAX_MANIFEST_BYTES = 256 * 2**20
#: Nesting a manifest needs: {"adapters": [{"tasks": [...], ...}]} is 3 deep; extra keys may nest a bit.
MAX_DEPTH = 32


class ManifestEntry(BaseModel):
    """One adapter of the manifest."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: StrictStr = Field(min_length=1, description="Adapter id, unique in the pool.")
    path: StrictStr = Field(default="", description="Adapter folder, relative to the pool (default: the id).")
    tasks: list[StrictStr] = Field(default_factory=list, description="Tasks this adapter serves.")
    description: StrictStr = ""

    @model_validator(mode="after")
    def _default_path(self) -> "ManifestEntry":
        if not self.path:
            object.__setattr__(self, "path", self.id)
        return self


class Manifest(BaseModel):
    """A pool's ``adapters.json``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    base_model: StrictStr | None = None
    adapters: list[ManifestEntry]

    @model_validator(mode="after")
    def _unique_ids(self) -> "Manifest":
        seen: set[str] = set()
        for entry in self.adapters:
            if entry.id in seen:
                raise ValueError(f"adapter id {entry.id!r} is listed twice; give each adapter one entry")
            seen.add(entry.id)
        return self


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion), stopping past ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def _describe(exc: ValidationError, data: Any) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = list(err.get("loc", ()))
        where = ""
        if len(loc) >= 2 and loc[0] == "adapters" and isinstance(loc[1], int):
            entry = data["adapters"][loc[1]] if isinstance(data, dict) else None
            ident = entry.get("id") if isinstance(entry, dict) else None
            where = f"adapter #{loc[1]}" + (f" ({ident!r})" if isinstance(ident, str) else "")
            loc = loc[2:]
        field = ".".join(str(x) for x in loc)
        msg = err.get("msg", "invalid")
        if field == "tasks" and err.get("type") == "list_type":
            msg = "must be a list of task ids (e.g. [\"sst2\"]), not a single string or other value"
        elif field == "path" and err.get("type") == "string_type":
            msg = "must be a folder name (omit 'path' to use the id)"
        parts.append(" ".join(p for p in (where, field) if p) + f": {msg}" if (where or field) else msg)
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return "; ".join(parts) + more


def parse_manifest(data: Any, source: str = MANIFEST) -> Manifest:
    """Validate already-parsed JSON as a manifest (`ManifestError` on any problem)."""
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise ManifestError(f"{source}: JSON nested more than {MAX_DEPTH} levels deep; this is not an adapter manifest")
    if not isinstance(data, dict) or "adapters" not in data:
        raise ManifestError(f"{source}: expected {{\"base_model\": ..., \"adapters\": [...]}}, "
                            f"got {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {_describe(exc, data)}") from None


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate ``adapters.json`` (`ManifestError` on any problem)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: {size} bytes is too large for an adapter manifest")
        text = path.read_bytes().decode("utf-8")
    except ManifestError:
        raise
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from exc
    try:
        data = json.loads(text)
    except RecursionError:
        raise ManifestError(f"{path}: JSON nested too deeply; this is not an adapter manifest") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return parse_manifest(data, str(path))


__all__ = ["MANIFEST", "Manifest", "ManifestEntry", "load_manifest", "parse_manifest"]
