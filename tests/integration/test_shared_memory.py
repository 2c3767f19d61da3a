"""Large buffers travel through shared memory, without copies, and never leak."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from batchpool import BatchPoolExecutor, WorkerCrashedError
from batchpool.transport import ring, shm, shm_names
from tests import helpers

np = pytest.importorskip("numpy")
TIMEOUT = 60
MB64 = 8 * 2**20  # float64 items in 64 MiB


def _leftovers(pid: int) -> list[str]:
    """Segments named after the pools of process ``pid``."""
    return [name for name in os.listdir(shm.SHM_DIR) if name.startswith(f"bp-{pid}-")]


def test_a_large_array_arrives_as_a_private_writeable_view_of_shared_memory() -> None:
    arr = np.arange(MB64, dtype=np.float64)
    with BatchPoolExecutor(max_workers=1) as ex:
        owns, writeable, total = ex.submit(helpers.describe_array, arr).result(TIMEOUT)
        # As with the standard pools, the job's argument is its own: it may
        # change it in place, and neither the parent nor later jobs see that.
        assert ex.submit(helpers.bump_in_place, arr).result(TIMEOUT) == 1.0
        assert ex.submit(helpers.bump_in_place, arr).result(TIMEOUT) == 1.0  # not 2.0: a fresh copy
        for _ in range(3):  # the block is reused: later batches see the data sent, not the edits
            assert ex.submit(helpers.describe_array, arr).result(TIMEOUT)[2] == total
    assert (owns, writeable) == (False, True)  # a view (no copy), yet writeable
    assert total == float(arr.sum()) and arr[1] == 1.0


def test_the_worker_reads_the_array_from_a_pool_segment_not_a_copy() -> None:
    arr = np.arange(MB64, dtype=np.float64)
    with BatchPoolExecutor(max_workers=1) as ex:
        mapping = ex.submit(helpers.array_mapping, arr).result(TIMEOUT)
    # The worker unlinked the name once mapped: the kernel shows it "(deleted)".
    assert mapping.startswith(f"{shm.SHM_DIR}/bp-{os.getpid()}-"), mapping


def test_buffers_sharing_a_block_each_arrive_whole() -> None:
    # One batch's buffers go back to back into one block, at aligned offsets.
    arrays = [np.full(n, float(k + 1)) for k, n in enumerate((100_000, 8_193, 250_001, 65_536))]
    with BatchPoolExecutor(max_workers=1) as ex:
        assert ex.submit(helpers.sums, *arrays).result(TIMEOUT) == [float(a.sum()) for a in arrays]
        futures = [ex.submit(helpers.sums, a, a[::-1].copy()) for a in arrays * 3]
        assert [f.result(TIMEOUT) for f in futures] == [[float(a.sum())] * 2 for a in arrays * 3]


def test_a_batch_over_its_shared_memory_budget_is_split_and_every_job_runs() -> None:
    arrays = [np.full(2**19, float(k)) for k in range(12)]  # 4 MiB each, batches up to 8 MiB
    with BatchPoolExecutor(max_workers=1) as ex:
        gate = ex.submit(helpers.sleep_and_return, 0.3, None)  # the rest queue up behind it
        futures = [ex.submit(helpers.sums, a) for a in arrays]
        gate.result(TIMEOUT)
        assert [f.result(TIMEOUT) for f in futures] == [[float(a.sum())] for a in arrays]
        sent = ex.stats().to_dict()["batches"]
    assert sent >= 1 + 6, f"12 jobs of 4 MiB went in {sent - 1} batches; at most 2 fit in 8 MiB"


def test_blocks_let_go_are_unmapped_by_the_worker_and_work_goes_on() -> None:
    # Twelve size classes: more free blocks than an arena keeps, so the
    # oldest are let go (and the worker told to unmap them) along the way.
    arrays = [np.ones(2**k) for k in range(14, 26)]
    with BatchPoolExecutor(max_workers=1) as ex:
        for _ in range(2):
            assert [ex.submit(helpers.sums, a).result(TIMEOUT) for a in arrays] == [[float(a.size)] for a in arrays]
        worker = next(iter(ex._backend._workers.values()))
        assert worker.arena is not None
        assert len(worker.arena._free) <= shm.Arena.MAX_FREE


def test_a_job_that_keeps_its_argument_keeps_what_it_was_sent() -> None:
    # Blocks are reused from batch to batch; one the job still holds a view
    # of must never be written again.
    first = np.full(MB64 // 8, 1.0)
    with BatchPoolExecutor(max_workers=1) as ex:
        assert ex.submit(helpers.keep_array, first).result(TIMEOUT) == first.sum()
        for k in range(2, 6):
            later = np.full(MB64 // 8, float(k))
            assert ex.submit(helpers.array_mapping, later).result(TIMEOUT)  # same size: a reused block
        assert ex.submit(helpers.kept_sums).result(TIMEOUT) == [first.sum()]


def test_blocks_are_reused_across_batches() -> None:
    arrays = [np.full(MB64 // 8, float(k)) for k in range(6)]
    with BatchPoolExecutor(max_workers=1) as ex:
        sums = [ex.submit(helpers.describe_array, a).result(TIMEOUT)[2] for a in arrays]
        worker = next(iter(ex._backend._workers.values()))
        assert worker.arena is not None
        made = len(worker.arena._all)
    assert sums == [float(a.sum()) for a in arrays]
    assert made == 1, f"{made} blocks for 6 arrays sent one after another"


def test_in_band_messages_larger_than_the_ring_go_through_both_ways() -> None:
    # bytes pickle in band: these stream through the 4 MiB rings in pieces.
    payload = os.urandom(3 * ring.RING_SIZE + 123)
    with BatchPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(helpers.echo, payload) for _ in range(4)]
        small = ex.submit(helpers.add_one, 1)
        assert all(f.result(TIMEOUT) == payload for f in futures)
        assert small.result(TIMEOUT) == 2


def test_a_full_dev_shm_sends_the_batch_through_the_ring_instead(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(self: shm.Arena, buffers: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shm.Arena, "put", full)
    arr = np.arange(MB64 // 8, dtype=np.float64)
    with BatchPoolExecutor(max_workers=1) as ex:
        owns, writeable, total = ex.submit(helpers.describe_array, arr).result(TIMEOUT)
    assert total == float(arr.sum())
    assert owns or writeable, "an ordinary unpickled copy, not a view of shared memory"
    assert "no shared memory for a batch" in caplog.text


def test_the_pipe_transport_copies_instead() -> None:
    arr = np.ones(MB64 // 8)
    with BatchPoolExecutor(max_workers=1, transport="pipe") as ex:
        owns, writeable, _ = ex.submit(helpers.describe_array, arr).result(TIMEOUT)
    assert writeable or owns  # an ordinary unpickled copy


_PEAK_SCRIPT = """
import resource, sys
import numpy as np
from batchpool import BatchPoolExecutor
from tests import helpers
if __name__ == "__main__":
    arr = np.ones(8 * 2**20)  # 64 MiB
    with BatchPoolExecutor(max_workers=1, transport=sys.argv[1]) as ex:
        ex.submit(helpers.add_one, 1).result(30)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert ex.submit(helpers.describe_array, arr).result(30)[2] == arr.size
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024 / arr.nbytes)
"""


def _peak_growth(transport: str) -> float:
    """How much the parent's peak RSS grows sending one 64 MiB array, in payloads."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, transport],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=os.getcwd(),
        check=True,
    ).stdout
    return float(out)


def test_the_parent_s_peak_memory_grows_by_less_than_twice_the_payload() -> None:
    # Measured in a fresh process: a peak is a high-water mark, and this one's
    # was set by earlier tests. The parent maps the block it copies into (the
    # same pages the worker reads, counted in both RSS): one payload, no more;
    # a private copy on top of it (a pickle, a staging buffer) would make two.
    growth = _peak_growth("shm")
    assert growth < 1.5, f"peak RSS grew by {growth:.2f}x the payload"


def test_large_results_come_back_through_shared_memory_as_arrays_of_your_own() -> None:
    with BatchPoolExecutor(max_workers=1) as ex:
        result = ex.submit(helpers.make_array, MB64 // 8).result(TIMEOUT)
        small = ex.submit(helpers.make_array, 2**14).result(TIMEOUT)
        assert helpers.array_mapping(result).startswith(f"{shm.SHM_DIR}/bp-{os.getpid()}-")
    assert result.sum() == MB64 // 8 and small.sum() == 2**14
    result[0] = small[0] = 5.0  # writeable, as from any pool: copy-on-write pages
    assert result.sum() == MB64 // 8 + 4 and small.sum() == 2**14 + 4
    assert not _leftovers(os.getpid()), "the parent unlinks a result segment once it has mapped it"


def test_no_segment_survives_a_worker_killed_mid_batch(tmp_path: Path) -> None:
    arr = np.ones(MB64 // 8)
    started = str(tmp_path / "started")
    with BatchPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(helpers.mark_and_sleep, started, 60, arr)
        helpers.wait_until(lambda: os.path.exists(started), what="the job to start")
        pid = next(iter(ex._processes.values())).pid
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError):
            fut.result(TIMEOUT)
        assert not _leftovers(os.getpid())
    assert not _leftovers(os.getpid())


def test_segments_of_a_killed_parent_are_cleaned_by_the_next_pool() -> None:
    # A parent killed with SIGKILL between writing a segment and its worker
    # mapping it leaves the name behind; the window is too short to hit
    # reliably, so make exactly that state: a segment named after a dead pid.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(TIMEOUT)
    orphan = os.path.join(shm.SHM_DIR, f"bp-{child.pid}-0-{os.urandom(8).hex()}")
    with open(orphan, "xb") as f:
        f.write(b"x" * 4096)
    mine = shm.SegmentFactory(shm.pool_prefix("test")).put(memoryview(b"live"))
    try:
        with BatchPoolExecutor(max_workers=1) as ex:  # a new pool cleans up on start
            ex.submit(helpers.add_one, 1).result(TIMEOUT)
        assert not os.path.exists(orphan)
        assert os.path.exists(os.path.join(shm.SHM_DIR, mine)), "a live process's segments stay"
    finally:
        shm.unlink(mine)
        shm.unlink(os.path.basename(orphan))


def _dead_pid() -> int:
    # Pids are below pid_max: this one is dead now and stays dead (and, offset
    # by ours, is this test run's alone).
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + os.getpid()


@contextlib.contextmanager
def _entries(names: list[str]) -> Iterator[list[str]]:
    """Paths in /dev/shm the test puts things at; all removed afterwards, whatever they are."""
    paths = [os.path.join(shm.SHM_DIR, name) for name in names]
    try:
        yield paths
    finally:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    os.rmdir(path)
                else:
                    os.unlink(path)


MIB = 2**17  # float64 items in 1 MiB


def test_a_hostile_dev_shm_neither_stops_a_pool_nor_fools_its_cleanup(tmp_path: Path) -> None:
    # Anyone can put anything in /dev/shm under a name shaped like a dead
    # pool's segment; the sweep at a pool's start used to raise
    # IsADirectoryError out of every submit.
    target = tmp_path / "precious"
    target.write_bytes(b"precious")
    dead = _dead_pid()
    names = [f"bp-{dead}-0-{os.urandom(8).hex()}" for _ in range(2)]
    with _entries(names) as paths:
        os.mkdir(paths[0])
        os.symlink(target, paths[1])
        with BatchPoolExecutor(max_workers=1) as ex:
            arg = np.ones(MIB)
            assert ex.submit(helpers.describe_array, arg).result(TIMEOUT) == (False, True, float(MIB))
            result = ex.submit(helpers.make_array, MIB).result(TIMEOUT)
            assert helpers.array_mapping(result).startswith(f"{shm.SHM_DIR}/bp-{os.getpid()}-")
            assert result.sum() == MIB
            # And under this pool's own prefix, for its cleanup at shutdown.
            prefix = ex._backend._shm_prefix
            assert prefix is not None
            names.extend(prefix + os.urandom(8).hex() for _ in range(2))
            paths.extend(os.path.join(shm.SHM_DIR, name) for name in names[2:])
            os.mkdir(paths[2])
            os.symlink(target, paths[3])
        assert all(os.path.lexists(path) for path in paths), "nothing of anyone else's is removed"
        assert target.read_bytes() == b"precious"


def test_a_taken_name_makes_the_worker_and_the_parent_draw_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A result segment's name that existed already made the worker exit
    # (a misleading WorkerCrashedError for the job). Names are random now; to
    # take one for sure, every process's first draw is made to collide, and
    # fork hands the patched draw to the worker.
    target = tmp_path / "precious"
    target.write_bytes(b"precious")
    taken = "0" * 16
    drawn: set[int] = set()  # pids that have drawn once
    real = shm_names._token

    def first_taken() -> str:
        if os.getpid() in drawn:
            return real()
        drawn.add(os.getpid())
        return taken

    monkeypatch.setattr(shm_names, "_token", first_taken)
    with BatchPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as ex:
        prefix = ex._backend._shm_prefix
        assert prefix is not None
        with _entries([prefix + taken]) as [path]:
            os.symlink(target, path)  # what a put would write through, were it followed
            arg = np.ones(MIB)
            assert ex.submit(helpers.describe_array, arg).result(TIMEOUT) == (False, True, float(MIB))
            result = ex.submit(helpers.make_array, MIB).result(TIMEOUT)
            assert result.sum() == MIB
            ex.shutdown()
            assert os.path.islink(path)
    assert target.read_bytes() == b"precious"


_SCRIPT = """
import sys, time
import multiprocessing
import numpy as np
from batchpool import BatchPoolExecutor
from tests import helpers
if __name__ == "__main__":
    method, mode = sys.argv[1], sys.argv[2]
    arr = np.ones(2**20)
    ex = BatchPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context(method))
    assert ex.submit(helpers.describe_array, arr).result(30)[2] == arr.sum()
    assert ex.submit(helpers.make_array, 2**20).result(30).sum() == 2**20
    if mode == "shutdown":
        ex.shutdown()
        sys.exit(0)
    running = ex.submit(helpers.sleep_and_return, 1.0, arr)
    queued = ex.submit(helpers.describe_array, arr + 1)
    helpers.wait_until(running.running, what="the job to run")
    print(" ".join(str(p.pid) for p in ex._processes.values()), flush=True)
    time.sleep(60)
"""


def _script(method: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, method, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_no_warning_and_no_segment_after_shutdown_whatever_the_start_method(method: str) -> None:
    proc = _script(method, "shutdown")
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert err == "", "nothing may be printed (resource_tracker warnings included)"
    assert not _leftovers(proc.pid)


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_no_segment_survives_a_parent_killed_with_sigkill(method: str) -> None:
    proc = _script(method, "kill")
    try:
        assert proc.stdout is not None
        workers = [psutil.Process(int(pid)) for pid in proc.stdout.readline().split()]
        assert workers, "the script did not get its job running"
        proc.kill()
        proc.wait(TIMEOUT)
        # The workers see their lifeline close, finish what they hold, clean
        # up the dead parent's segments and exit.
        _, alive = psutil.wait_procs(workers, timeout=TIMEOUT)
        assert not alive, "workers outlived their killed parent"
        assert not _leftovers(proc.pid)
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        shm.cleanup_prefix(f"bp-{proc.pid}-")
