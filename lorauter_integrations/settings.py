"""Project settings (model, pool, store, routing knobs) and where the project keeps what it makes.

One configuration read by the CLI and by Python alike (`load_settings`), from, lowest first:

1. the defaults: the demo model, the bundled adapter pool, the demo task store, ``lorauter``
   routing with k=3, tau=0.2 and the router's default floor (`routing.lorauter.DEFAULT_FLOOR`,
   ``"auto"``: the floor calibrated and recorded in the store, none if none is recorded);
2. a ``lorauter.toml`` file: ``$LORAUTER_CONFIG``, else the first ``lorauter.toml`` in the current
   folder or its parents (relative paths in it are relative to the file);
3. environment variables ``LORAUTER_MODEL``, ``LORAUTER_POOL``, ``LORAUTER_STORE``,
   ``LORAUTER_SERVER``, ``LORAUTER_STRATEGY``, ``LORAUTER_K``, ``LORAUTER_TAU``, ``LORAUTER_FLOOR``;
4. explicit arguments (CLI options, keyword arguments).

Example ``lorauter.toml``::

    model = "HuggingFaceTB/SmolLM2-135M-Instruct"   # "demo", a HF id or a local folder
    pool = "my_adapters"          # folder with adapters.json
    store = "my_store"            # task store folder (or server = "127.0.0.1:8000")
    strategy = "lorauter"
    k = 2
    tau = 0.2
    floor = 0.3                   # or "auto" (the store's calibrated floor), "off" (none)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidInputError

CONFIG_FILE = "lorauter.toml"
ENV_PREFIX = "LORAUTER_"


def cache_dir() -> Path:
    """``$LORAUTER_CACHE``, or ``~/.cache/lorauter``; created on first use."""
    root = os.environ.get("LORAUTER_CACHE") or Path.home() / ".cache" / "lorauter"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


class Settings(BaseModel):
    """What a project routes with. None for ``pool``/``store``: the bundled demo pool / demo store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("demo", description='"demo", a Hugging Face id or a local model folder.')
    pool: str | None = Field(None, description="Adapter pool folder with an adapters.json; None: the bundled demo pool.")
    store: str | None = Field(None, description="Task store folder; None: the demo store (Flan tasks).")
    server: str | None = Field(None, description="HOST:PORT of a `chroma run` server instead of a folder.")
    strategy: str = Field("lorauter", description="Routing strategy (lorauter, retriever, examples, ...).")
    k: int = Field(3, ge=1, description="Tasks mixed per route (top-k).")
    tau: float = Field(0.2, gt=0, description="Softmax temperature over the top-k similarities.")
    floor: float | Literal["auto", "off"] | None = Field(
        None, description='Below this best similarity: the base model. "auto": the floor recorded in the store; '
                          '"off" (or "none"): no floor; None (not set): the router\'s default (DEFAULT_FLOOR).')
    source: str | None = Field(None, description="The lorauter.toml these settings were read from.")

    @field_validator("floor", mode="before")
    @classmethod
    def _parse_floor(cls, value: Any) -> Any:
        if value is None:
            return None
        from .floor import parse_floor

        parsed = parse_floor(value)
        return "off" if parsed is None else parsed

    def router_config(self) -> dict[str, Any]:
        """The routing knobs as ``RoutedModel(router_config=...)`` takes them."""
        cfg: dict[str, Any] = {"k": self.k, "tau": self.tau}
        if self.floor is not None:
            cfg["floor"] = None if self.floor == "off" else self.floor
        return cfg


_FIELDS = ("model", "pool", "store", "server", "strategy", "k", "tau", "floor")


def find_config(start: str | Path | None = None) -> Path | None:
    """``$LORAUTER_CONFIG``, else the first ``lorauter.toml`` in ``start`` (cwd) or its parents."""
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise InvalidInputError(f"LORAUTER_CONFIG={env}: no such file")
        return path
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise InvalidInputError(f"{path}: reading lorauter.toml needs Python 3.11+ or `pip install tomli`; "
                                    "or use LORAUTER_* environment variables") from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(f"{path}: cannot read settings ({exc})") from exc
    data = data.get("lorauter", data) if isinstance(data.get("lorauter"), dict) else data
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise InvalidInputError(f"{path}: unknown setting(s) {unknown}; known: {', '.join(_FIELDS)}")

    def rel(p: Any) -> Any:  # paths relative to the file; ids such as "org/model" stay as they are
        return str((path.parent / p).resolve()) if isinstance(p, str) and (path.parent / p).exists() else p

    for key in ("pool", "store", "model"):
        if key in data:
            data[key] = rel(data[key])
    return data


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """The project's settings: defaults < ``lorauter.toml`` < ``LORAUTER_*`` env vars < ``overrides``
    (None values in ``overrides`` are ignored, so CLI options left unset do not override)."""
    values: dict[str, Any] = {}
    path = Path(config) if config is not None else find_config()
    if path is not None:
        values.update(_read_toml(path))
        values["source"] = str(path)
    for key in _FIELDS:
        env = os.environ.get(ENV_PREFIX + key.upper())
        if env not in (None, ""):
            values[key] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInputError(f"setting '{'.'.join(map(str, err['loc']))}': {err['msg']}"
                                f"{' (from ' + str(path) + ')' if path else ''}") from exc


__all__ = ["CONFIG_FILE", "Settings", "cache_dir", "find_config", "load_settings"]


@contextmanager
def quiet_loading():
    """Model loads are quiet by default: transformers' "Loading weights" bars are hidden unless
    ``LORAUTER_VERBOSE=1`` (the process-wide setting is restored afterwards)."""
    from transformers.utils import logging as hf_logging

    if os.environ.get("LORAUTER_VERBOSE") == "1" or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
