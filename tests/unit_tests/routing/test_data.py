"""JSONL validation: each malformed input is a DatasetError naming the line."""

from __future__ import annotations

import pytest

from lorauter_integrations.data import group_tasks, load_tasks, read_jsonl
from lorauter_integrations.errors import DatasetError


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"task": "a", "inputs": "x"}\n{"task": "a"}\n', ":2: field 'inputs'"),
        (b'{"task": "a", "inputs": 5}\n', ":1: field 'inputs'"),
        (b'{"task": "a", "inputs": "   "}\n', "empty"),
        (b'{"task": "a", "inputs": "x", "metric": "accuracy"}\n', "metric"),
        (b'{"task": "a", "inputs": "caf\xe9"}\n', "not valid UTF-8"),
        (b'[1, 2]\n', "expected a JSON object"),
        (b'{"task": "a", "inputs": "x"\n', "not JSON"),
        (b'\n\n', "no records"),
        (b'{"task": "a\\u0000b", "inputs": "x"}\n', "control characters"),
    ],
)
def test_malformed_jsonl_is_a_dataset_error(tmp_path, content, match):
    f = tmp_path / "v.jsonl"
    f.write_bytes(content)
    with pytest.raises(DatasetError, match=match):
        read_jsonl(f)


def test_a_task_with_two_domains_is_refused(tmp_path):
    f = tmp_path / "v.jsonl"
    f.write_text('{"task": "a", "inputs": "x", "domain": "d1"}\n{"task": "a", "inputs": "y", "domain": "d2"}\n')
    with pytest.raises(DatasetError, match="inconsistent"):
        load_tasks(f)


def test_examples_group_by_task_in_first_seen_order(tmp_path):
    f = tmp_path / "v.jsonl"
    f.write_text('{"task": "b", "inputs": "1"}\n{"task": "a", "inputs": "2"}\n{"task": "b", "inputs": "3"}\n')
    groups = group_tasks(read_jsonl(f))
    assert [g.task for g in groups] == ["b", "a"] and groups[0].inputs == ["1", "3"]
