"""Smoke test of `lorauter bench --smoke --json`: it runs end to end and reports every headline key.

The figures themselves are benchmarks, not test outcomes (they depend on the machine's load); see
BENCHMARKS.md for measured values.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lorauter_integrations.lab.bench import TARGETS

HEADLINE_KEYS = [
    "routing_p50_ms", "routing_share", "route_p50_ratio_10k_vs_48", "cached_activation_ms", "cold_mixture_ms",
    "naive_merge_ms", "merged_vs_base", "mixture_vs_base", "mixed_batch_speedup", "routing_recall_at1_10k",
]


@pytest.mark.slow
def test_bench_smoke_json_reports_every_headline_key_as_a_number():
    proc = subprocess.run(
        [sys.executable, "-m", "lorauter_integrations.cli", "bench", "--smoke", "--json"],
        capture_output=True, text=True, timeout=2400,  # bounded; minutes idle, ~10 at load 10
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    for key in HEADLINE_KEYS:
        assert isinstance(results[key], (int, float)) and results[key] >= 0, key
    assert set(results["targets"]) == set(TARGETS)
    assert results["mode"] == "smoke"
    assert results["noisy_pool"]["pool_size"] >= 64
    assert results["batch"]["identical_outputs"] == "8/8"  # batched rows decode exactly what they decode alone
    assert set(results["seconds_per_phase"]) >= {"routing", "composition", "generation", "mixed_batch", "noisy_pool"}
