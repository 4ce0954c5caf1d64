"""Fixtures for reliability tests: a real `chroma run` server and small Flan task slices.

The server (``chroma run`` from the chromadb install) listens on 127.0.0.1 on a free port with
its own data folder, is waited for with a bounded timeout and terminated when the session ends.
Tests that use it are marked ``@pytest.mark.server`` (they run by default, as in CI). Tests share
the server and keep apart by collection-name prefix (the ``store_name`` fixture).
"""

from __future__ import annotations

import itertools
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from lorauter_integrations.data import bundled_data_dir, load_tasks  # noqa: E402
from rel_support import SLICE  # noqa: E402


_names = itertools.count()


@pytest.fixture
def store_name() -> str:
    """A collection-name prefix no other test of this session uses."""
    return f"rel{os.getpid()}x{next(_names)}"


@pytest.fixture(scope="session")
def all_tasks():
    """Every bundled Flan validation task, by id."""
    return {t.task: t for t in load_tasks(bundled_data_dir() / "validation.jsonl")}


@pytest.fixture(scope="session")
def slice_tasks(all_tasks):
    """Eight Flan tasks (two per domain for four domains), eight examples each."""
    return [all_tasks[name].model_copy(update={"examples": all_tasks[name].examples[:8]}) for name in SLICE]
