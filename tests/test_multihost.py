"""The same training step across processes, with ``jax.distributed`` on 127.0.0.1.

Each run starts two processes of tests/multihost_driver.py (CPU devices, gloo collectives),
with 1 and with 2 devices per process: the first run trains and saves checkpoints, a second
run of fresh processes restores them and continues. Every check the driver reports is a test
here. A run is bounded by a hard timeout, after which both processes are killed and the test
fails with the tail of their output, so a hung collective never hangs CI.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
PROCESSES = 2
TIMEOUT_S = 240
OPTIMIZERS = ["adamw", "clip_adamw", "adafactor", "zero1", "adamw_8bit", "muon"]
# Local devices per process, and the optimizers whose 20 steps and resume are checked with
# them: all with one device per process (one process per GPU, the usual layout), FSDP and ZeRO-1
# with two (a mesh within and across processes), to keep the runs short.
LOCAL_DEVICES = {1: OPTIMIZERS, 2: ["adamw", "zero1"]}


def checks(local_devices: int) -> dict:
    """The names tests/multihost_driver.py reports per phase; a test below keeps them equal."""
    optimizers = LOCAL_DEVICES[local_devices]
    return {
        "train": [
            "processes_and_devices",
            *(f"init_commits_every_leaf_to_the_mesh[{o}]" for o in OPTIMIZERS),
            *(f"twenty_steps_match_one_process[{o}]" for o in optimizers),
            "init_sharded_gives_exactly_the_asked_shardings",
            *(
                f"tree_set_never_recompiles[{where}]"
                for where in ("one_device", "mesh_of_this_process", "across_processes")
            ),
            "save_state_writes_and_restores_a_state_across_processes",
            "state_shardings_keeps_a_memory_kind",
            "zero1_offload_keeps_state_on_host_and_matches_bit_for_bit",
            "per_device_and_per_process_bytes_see_every_process",
            "zero1_step_gathers_each_update_once_and_reduces_each_gradient_once",
            "readme_many_hosts_example_runs",
        ],
        "resume": [f"checkpoint_continues_bit_identically[{o}]" for o in optimizers],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(phase: str, names: list, workdir: str, local_devices: int) -> dict:
    """Runs ``phase`` on ``PROCESSES`` processes; ``{"results": {check: [per process]}, ...}``."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE.parent),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "multihost_driver.py"), phase, workdir, str(i)]
            + [str(PROCESSES), str(port), *names],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    outputs, timed_out = [], False
    deadline = time.monotonic() + TIMEOUT_S
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            for p in procs:
                p.kill()
            out, _ = proc.communicate()
        outputs.append(out)
    results: dict = {}
    registered: list = []
    for out in outputs:
        for line in out.splitlines():
            if line.startswith('{"check"'):
                r = json.loads(line)
                results.setdefault(r["check"], []).append(r)
            elif line.startswith('{"registered"'):
                registered = json.loads(line)["registered"]
    tails = "\n".join(
        f"--- process {i} (exit code {p.returncode}) ---\n{out[-3000:]}"
        for i, (p, out) in enumerate(zip(procs, outputs))
    )
    return {"results": results, "registered": registered, "timed_out": timed_out, "tails": tails}


def _run_all(local_devices: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="gradchain-multihost-") as workdir:
        return {
            phase: _launch(phase, names, workdir, local_devices)
            for phase, names in checks(local_devices).items()
        }


@pytest.fixture(scope="session")
def multihost(tmp_path_factory, worker_id):
    """The runs' results, computed once per session even when pytest-xdist splits it."""
    if worker_id == "master":
        cache: dict = {}

        def results(n):
            if n not in cache:
                cache[n] = _run_all(n)
            return cache[n]

        return results
    shared = tmp_path_factory.getbasetemp().parent

    def results(n):
        out = shared / f"multihost_{n}.json"
        with open(shared / f"multihost_{n}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not out.exists():
                out.write_text(json.dumps(_run_all(n)))
        return json.loads(out.read_text())

    return results


@pytest.fixture(scope="session")
def worker_id(request):
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


CASES = [
    (n, phase, name) for n in LOCAL_DEVICES for phase, names in checks(n).items() for name in names
]


@pytest.mark.parametrize(
    "local_devices, phase, name", CASES, ids=[f"{n}dev-{p}-{c}" for n, p, c in CASES]
)
def test_on_two_processes(multihost, local_devices, phase, name):
    run = multihost(local_devices)[phase]
    reports = run["results"].get(name, [])
    assert not run["timed_out"], f"killed after {TIMEOUT_S} s:\n{run['tails']}"
    assert len(reports) == PROCESSES, (
        f"{name}: {len(reports)} of {PROCESSES} processes reported\n{run['tails']}"
    )
    failures = [f"process {r['process']}:\n{r['detail']}" for r in reports if not r["ok"]]
    assert not failures, "\n".join(failures)


def test_every_check_the_driver_has_runs_here(multihost):
    for phase in ("train", "resume"):
        asked = {name for n in LOCAL_DEVICES for name in checks(n)[phase]}
        assert set(multihost(1)[phase]["registered"]) == asked, phase
