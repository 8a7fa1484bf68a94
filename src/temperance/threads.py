"""threads: how many CPU threads torch gets by default, and an OpenMP wait policy that degrades
gracefully when there are more threads than free cores. Imports no torch (it must run before).

**The default** (`default_threads`): the CPUs this process may use (`os.sched_getaffinity`, lowered
to a cgroup CPU quota where one is set) minus the 1-minute load average, rounded to the nearest
integer; at least 1, at most `MAX_DEFAULT_THREADS`. So an idle 2-core machine gets 2, the same
machine with one other busy process gets 1 (the load average counts runnable tasks machine-wide;
a container sees its host's, which can only make the default smaller). `--threads` overrides it.

**Why**: torch's CPU kernels run on OpenMP threads; a thread that waits at a barrier for a thread
that has no core spins for a while (libgomp: ~300k iterations) before it sleeps, stealing the
core from the very thread it waits for. On a busy 2-core machine the README's beam-search example
took 277 s with 2 threads and 46 s with 1.

**The wait policy** (`prepare_openmp`): `OMP_WAIT_POLICY=PASSIVE`, unless the user set it, so a
waiting thread sleeps at once. libgomp reads it once, when torch loads it, so the package's
`__init__` calls this first thing, and only when the process is the `temperance` command
(`started_as_cli`: the console script or `python -m temperance`): a library user's process
environment is never changed.

>>> 1 <= default_threads() <= MAX_DEFAULT_THREADS
True
>>> default_threads(cpus=2, load=0.0), default_threads(cpus=2, load=1.1), default_threads(cpus=2, load=7.0)
(2, 1, 1)
>>> default_threads(cpus=64, load=3.0)      # capped
8
"""

from __future__ import annotations

import math
import os
import sys

__all__ = ["MAX_DEFAULT_THREADS", "available_cpus", "default_threads", "prepare_openmp", "started_as_cli"]

# More threads rarely pay for the decode step of a small model on CPU (per-op work is small and
# every op ends in a barrier); --threads sets any count.
MAX_DEFAULT_THREADS = 8


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, lowered to the cgroup v2 CPU quota
    (`/sys/fs/cgroup/cpu.max`, rounded up) where one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def default_threads(cpus: int | None = None, load: float | None = None) -> int:
    """Free CPUs now: `round(cpus - load)` clamped to [1, MAX_DEFAULT_THREADS].

    Args:
        cpus: CPUs available (default `available_cpus()`).
        load: the 1-minute load average (default `os.getloadavg()[0]`; 0 where there is none).
    """
    if cpus is None:
        cpus = available_cpus()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    free = math.floor(cpus - load + 0.5)
    return max(1, min(cpus, MAX_DEFAULT_THREADS, free))


def prepare_openmp() -> bool:
    """Set `OMP_WAIT_POLICY=PASSIVE` unless it is set, if torch is not loaded yet (it is read when
    torch loads its OpenMP runtime). Return whether the policy now in force is the one set here."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def started_as_cli(argv: list[str] | None = None) -> bool:
    """Is this process the `temperance` command (the console script, or `python -m temperance`)?

    `argv` is the interpreter's command line (`sys.orig_argv`), so a program that merely imports
    temperance, pytest included, is not the command.

    >>> started_as_cli(["python", "-m", "temperance", "generate"]), started_as_cli(["python", "/venv/bin/temperance"])
    (True, True)
    >>> started_as_cli(["python", "-X", "dev", "-m", "pytest"]), started_as_cli(["python", "-c", "import temperance"])
    (False, False)
    """
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    rest, i = argv[1:], 0
    while i < len(rest) and rest[i].startswith("-") and rest[i] not in ("-m", "-c", "-"):
        i += 2 if rest[i] in ("-X", "-W") else 1          # interpreter options (and their values)
    rest = rest[i:]
    if rest[:1] == ["-m"]:
        return rest[1:2] in (["temperance"], ["temperance.cli"])
    if rest[:1] in (["-c"], ["-"]):
        return False
    script = rest[0] if rest else argv[0]
    return os.path.basename(script).split(".")[0] == "temperance"
