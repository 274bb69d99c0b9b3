"""Determinism: the same seed and inputs give bit-identical results, within a process and across
two separate processes (a fresh compilation each time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import determinism_driver

HERE = Path(__file__).resolve().parent


def _start_driver() -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    return subprocess.Popen(
        [sys.executable, str(HERE / "determinism_driver.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _hashes(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return dict(line.split() for line in out.strip().splitlines())


def test_two_processes_produce_bit_identical_trajectories():
    first, second = _start_driver(), _start_driver()  # run side by side
    first, second = _hashes(first), _hashes(second)
    assert set(first) == set(determinism_driver.OPTIMIZERS)
    assert first == second


def test_two_runs_in_one_process_produce_bit_identical_trajectories():
    for name in ("adamw", "muon"):
        assert determinism_driver.digest(name) == determinism_driver.digest(name), name
