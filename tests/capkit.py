"""Running a hostile input in a child Python under a memory and a time cap (not a test module).

The failure mode of a small hostile file is a blow-up: gigabytes of memory or minutes of CPU. Run in the
test process, a regression would take the test machine down instead of failing one test, so each case runs
in a child whose address space is capped (``RLIMIT_AS``, on top of what its imports already mapped) and
which is killed after a time limit. A case passes when the child finishes its snippet; the negative
controls run the unbounded code under the same caps and check that it does *not* finish.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

DONE = "CAPKIT-DONE"

_TEMPLATE = """\
import resource

{setup}

def _mapped():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")

_cap = _mapped() + {mem_bytes}
resource.setrlimit(resource.RLIMIT_AS, (_cap, _cap))

{code}
print({done!r}, flush=True)
"""


@dataclass
class Capped:
    """What a capped child did: exit code (None when killed at the time limit), output, and verdicts."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def finished(self) -> bool:
        return not self.timed_out and self.returncode == 0 and DONE in self.stdout

    @property
    def out_of_memory(self) -> bool:
        return not self.finished and ("MemoryError" in self.stderr or self.returncode in (-9, 137))

    def __str__(self) -> str:
        return (f"returncode={self.returncode} timed_out={self.timed_out}\n"
                f"stdout: {self.stdout[-1500:]}\nstderr: {self.stderr[-3000:]}")


def require_caps() -> None:
    """Skip where the caps cannot be set (they rely on Linux's /proc and RLIMIT_AS)."""
    if not sys.platform.startswith("linux") or not os.path.exists("/proc/self/status"):
        pytest.skip("memory-capped child processes need Linux (/proc/self/status, RLIMIT_AS)")


def child_env() -> dict[str, str]:
    """One thread per pool and few malloc arenas: address space then tracks what the code allocates."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MALLOC_ARENA_MAX="2",
               PYTHONWARNINGS="ignore")
    return env


def script(code: str, *, mem_mb: int, setup: str = "") -> str:
    """The child's source: ``setup`` (imports, input files) runs uncapped, then ``code`` under the cap."""
    return _TEMPLATE.format(setup=textwrap.dedent(setup), code=textwrap.dedent(code),
                            mem_bytes=mem_mb << 20, done=DONE)


def run_capped(code: str, *, mem_mb: int, timeout: float, setup: str = "") -> Capped:
    """Run ``code`` in a child with ``mem_mb`` MiB of address space beyond its setup, for ``timeout`` s."""
    require_caps()
    try:
        proc = subprocess.run([sys.executable, "-c", script(code, mem_mb=mem_mb, setup=setup)],
                              capture_output=True, text=True, timeout=timeout, env=child_env())
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Capped(None, out, err, True)
    return Capped(proc.returncode, proc.stdout, proc.stderr, False)


def start_capped(code: str, *, mem_mb: int, setup: str = "") -> subprocess.Popen:
    """``run_capped`` for a long-lived child (a server): the caller reads its stdout and ends it."""
    require_caps()
    return subprocess.Popen([sys.executable, "-c", script(code, mem_mb=mem_mb, setup=setup)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
