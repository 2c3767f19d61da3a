"""The leak check counts this test run's own things only.

Another test run side by side, or any other program, may create files in
/dev/shm and processes while a test runs; only what this process and its new
descendants made may fail the test. The check is called here as a function
(``helpers.find_leaks``), around things made on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from batchpool.transport import shm
from tests import helpers

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs /dev/shm")

TIMEOUT = 30


def _dead_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + os.getpid()  # above pid_max: nobody's


@pytest.fixture
def files() -> Iterator[list[str]]:
    """Names the test creates in /dev/shm; removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            os.unlink(os.path.join(shm.SHM_DIR, name))
        except FileNotFoundError:
            pass


def _create(files: list[str], name: str) -> str:
    files.append(name)
    with open(os.path.join(shm.SHM_DIR, name), "xb") as f:
        f.write(b"x")
    return name


def test_other_programs_segments_do_not_count(files: list[str]) -> None:
    baseline = helpers.leak_baseline()
    token = os.urandom(8).hex()
    _create(files, f"isolation-{token}")  # some other program's
    _create(files, f"bp-1-0-{token}")  # a pool of a live process that is not ours (another run)
    _create(files, f"bp-{_dead_pid()}-0-{token}")  # another run's orphan
    assert helpers.find_leaks(baseline, timeout=1.0) == []


def test_a_process_that_is_not_our_descendant_does_not_count() -> None:
    baseline = helpers.leak_baseline()
    # The shell exits at once; its background sleep is reparented away from us.
    shell = subprocess.run(
        ["sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    stranger = int(shell.stdout)
    try:
        assert helpers.find_leaks(baseline, timeout=1.0) == []
    finally:
        os.kill(stranger, signal.SIGKILL)


_CHILD = """
import os, sys
name = f"bp-{os.getpid()}-0-{os.urandom(8).hex()}"
with open(os.path.join("/dev/shm", name), "xb") as f:
    f.write(b"x")
print(name, flush=True)
sys.stdin.read()
"""


def test_what_this_process_and_its_children_leave_still_counts(files: list[str]) -> None:
    baseline = helpers.leak_baseline()
    mine = _create(files, shm.pool_prefix("isolation") + os.urandom(8).hex())
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        childs = child.stdout.readline().strip()
        files.append(childs)
        leaks = helpers.find_leaks(baseline, timeout=0.2)
        assert leaks == [
            f"child processes outlived the test: {[child.pid]}",
            f"/dev/shm segments outlived the test: {sorted([mine, childs])}",
        ]
    finally:
        child.communicate(timeout=TIMEOUT)  # closes its stdin: it exits
    for name in files:
        os.unlink(os.path.join(shm.SHM_DIR, name))
    files.clear()
    assert helpers.find_leaks(baseline, timeout=1.0) == []
