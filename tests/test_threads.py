"""The default thread count (free CPUs) and the OpenMP wait policy the `temperance` command sets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from temperance import threads
from temperance.threads import MAX_DEFAULT_THREADS, available_cpus, default_threads, started_as_cli


@pytest.mark.parametrize("cpus,load,want", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.3, 1), (2, 40.0, 1),   # never < 1
    (1, 0.0, 1), (16, 12.2, 4), (16, 3.2, MAX_DEFAULT_THREADS), (64, 60.0, 4)])
def test_default_is_free_cpus_rounded_and_clamped(cpus, load, want):
    assert default_threads(cpus=cpus, load=load) == want


def test_default_reads_this_machine(monkeypatch):
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads() == min(available_cpus(), MAX_DEFAULT_THREADS)
    monkeypatch.setattr(os, "getloadavg", lambda: (1e6, 0.0, 0.0))
    assert default_threads() == 1


@pytest.mark.parametrize("argv,want", [
    (["python", "-m", "temperance", "generate", "hi"], True),
    (["python", "-X", "dev", "-W", "ignore", "-m", "temperance"], True),
    (["/venv/bin/python3", "/venv/bin/temperance", "serve"], True),
    (["python", "-m", "pytest", "-q", "tests/test_threads.py"], False),
    (["python", "-c", "import temperance"], False),
    (["python", "bench.py", "-m", "temperance"], False),
    (["python", "-m", "temperance_other"], False),
])
def test_started_as_cli(argv, want):
    assert started_as_cli(argv) is want


def test_prepare_openmp_respects_the_user_and_a_loaded_torch(monkeypatch):
    import torch  # noqa: F401 - loaded: too late to change the policy
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert threads.prepare_openmp() is False and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    assert threads.prepare_openmp() is True and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.prepare_openmp() is False and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


PROBE = ("import os, sys; sys.orig_argv[1:] = {argv!r}; import temperance; "
         "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")


@pytest.mark.parametrize("argv,user,want", [
    (["-m", "temperance", "generate"], None, "PASSIVE True"),     # the command: set before torch
    (["-m", "temperance", "generate"], "ACTIVE", "ACTIVE True"),  # the user's choice stays
    (["-c", "import temperance"], None, "None True"),             # a library user: untouched
])
def test_the_command_sets_the_policy_before_torch_loads(argv, user, want):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user:
        env["OMP_WAIT_POLICY"] = user
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == want
