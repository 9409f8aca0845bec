"""The thread policy of data.runtime (the device choice is tested with the stages)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data import runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_choose_threads_rule(monkeypatch):
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 8)
    assert runtime.choose_threads() == 8
    assert runtime.choose_threads(workers=3) == 5
    assert runtime.choose_threads(workers=20) == 1  # never below one
    assert runtime.choose_threads(threads=3, workers=6) == 3  # the explicit option wins
    monkeypatch.setenv(runtime.THREADS_ENV, "2")  # make THREADS=2
    assert runtime.choose_threads(workers=1) == 2
    assert runtime.choose_threads(threads=4) == 4


def test_available_cores_is_the_affinity_mask():
    assert runtime.available_cores() == len(__import__("os").sched_getaffinity(0))


def test_apply_and_worker_threads(restore_threads, monkeypatch):
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    assert runtime.apply_threads(1) == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    runtime.worker_threads(0)
    assert torch.get_num_threads() == 1


def test_quiet_openmp_respects_the_user():
    env: dict = {}
    assert runtime.quiet_openmp(env) and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not runtime.quiet_openmp(env) and env["OMP_WAIT_POLICY"] == "ACTIVE"


def test_entry_points_set_the_wait_policy_before_torch():
    code = ("import os, sys; import train.__main__; "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["PASSIVE", "True"]


def test_gpu_benchmark_cpu_dry_run(tmp_path):
    """bench/bench_gpu.py end to end on the CPU at tiny sizes: every section runs and is written."""
    out = subprocess.run([sys.executable, "-m", "bench.bench_gpu", "--cpu-dry-run", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["cpu_dry_run"] and not res["errors"]
    assert set(res["sections"]) == {"train_step", "streams", "evaluation", "loader"}
    assert {(r["dtype"], r["compile"]) for r in res["sections"]["train_step"]} == {("fp16", False), ("bf16", False)}
    assert all(r["loss_finite"] and r["step_ms"] > 0 for r in res["sections"]["train_step"])
    assert res["sections"]["loader"]["samples_per_s"] > 0
    assert "projected full paper recipe" in (tmp_path / "gpu.txt").read_text()
