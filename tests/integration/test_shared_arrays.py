"""ex.empty() / ex.zeros(): arrays in the pool's shared memory, sent as handles, written in place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import wait
from typing import Any

import psutil
import pytest

from batchpool import BatchPoolExecutor, WorkerCrashedError
from batchpool.transport import shm
from tests import helpers

np = pytest.importorskip("numpy")
shared = pytest.importorskip("batchpool.shared")
TIMEOUT = 60


def fill(arr: Any, value: float) -> None:
    arr[...] = value


def fill_and_return(arr: Any, value: float) -> Any:
    arr[...] = value
    return arr


def shm_mappings(_: Any) -> list[str]:
    """The /dev/shm files this worker has mapped (its argument is mapped by now)."""
    with open("/proc/self/maps") as f:
        return sorted({line.split()[-1] for line in f if "/dev/shm/bp-" in line})


def owns_data(arr: Any) -> bool:
    return bool(arr.flags.owndata) or not shared.is_shared(arr)


def _name(arr: Any) -> str:
    segment = arr._bp_segment
    assert segment is not None
    return str(segment.name)


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join(shm.SHM_DIR, name))


def test_workers_fill_slices_of_one_output_and_the_parent_sees_them() -> None:
    with BatchPoolExecutor(max_workers=2) as ex:
        out = ex.empty((4, 1000))
        done, _ = wait([ex.submit(fill, out[i], i) for i in range(4)], timeout=TIMEOUT)
        for f in done:
            f.result(0)
        assert (out == np.arange(4)[:, None]).all()
        ex.submit(fill, out[:, ::2][::-1], -1).result(TIMEOUT)  # strided and reversed too
        assert (out[:, ::2] == -1).all() and (out[:, 1::2] == np.arange(4)[:, None]).all()


def test_a_view_travels_as_a_handle_and_comes_back_as_one() -> None:
    with BatchPoolExecutor(max_workers=1) as ex:
        out = ex.zeros(2**20)
        name = _name(out)
        # The worker maps the segment itself: no copy of the data was sent.
        assert name in {os.path.basename(p) for p in ex.submit(shm_mappings, out[10:20]).result(TIMEOUT)}
        back = ex.submit(fill_and_return, out[5:10], 7.0).result(TIMEOUT)
        assert shared.is_shared(back) and np.shares_memory(back, out)
        assert back.base is not None and out[5:10].tolist() == [7.0] * 5


def test_computations_give_ordinary_arrays_and_copies_travel_by_value() -> None:
    with BatchPoolExecutor(max_workers=1) as ex:
        out = ex.zeros(8)
        assert type(out + 1) is np.ndarray and type(np.sqrt(out)) is np.ndarray
        assert type(out.sum()) is np.float64
        alias = out
        alias += 1  # in place: still the shared array
        assert alias is out and shared.is_shared(out)
        copy = out.copy()
        assert not shared.is_shared(copy)
        ex.submit(fill, copy, 5.0).result(TIMEOUT)  # the worker writes its own copy
        assert (copy == 1).all()


def test_the_array_outlives_the_pool_and_no_name_does() -> None:
    ex = BatchPoolExecutor(max_workers=1)
    out = ex.zeros(16)
    ex.submit(fill, out[:8], 3.0).result(TIMEOUT)
    name = _name(out)
    ex.shutdown()
    assert not _exists(name)
    out[8:] = 4.0  # still mapped, still writeable
    assert out.tolist() == [3.0] * 8 + [4.0] * 8
    with pytest.raises(RuntimeError):
        ex.empty(3)
    with BatchPoolExecutor(max_workers=1) as other:
        other.submit(fill, out, 9.0).result(TIMEOUT)  # by value now: a copy
    assert out.tolist() == [3.0] * 8 + [4.0] * 8


def test_the_name_goes_with_the_last_array() -> None:
    with BatchPoolExecutor(max_workers=1) as ex:
        out = ex.empty(4)
        view = out[1:]
        name = _name(out)
        del out
        assert _exists(name), "a view keeps the memory and its name"
        del view
        assert not _exists(name)


def test_workers_started_later_map_it_too(tmp_path: Any) -> None:
    with BatchPoolExecutor(max_workers=1, max_tasks_per_child=1) as ex:
        out = ex.zeros(4)
        pids = set()
        for i in range(3):  # a fresh worker process for every job
            ex.submit(fill, out[i : i + 1], i + 1).result(TIMEOUT)
            pids.add(ex.submit(helpers.getpid).result(TIMEOUT))
        crashed = ex.submit(helpers.exit_now, 3)
        with pytest.raises(WorkerCrashedError):
            crashed.result(TIMEOUT)
        ex.submit(fill, out[3:], 4).result(TIMEOUT)  # the replacement maps it
        assert out.tolist() == [1, 2, 3, 4]
        assert len(pids) == 3
        name = _name(out)
    assert not _exists(name)


def test_thread_backend_gives_a_plain_array() -> None:
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        out = ex.empty((2, 3), dtype="int64", order="F")
        assert type(out) is np.ndarray and out.flags.f_contiguous and out.dtype == np.int64
        ex.submit(fill, out, 1).result(TIMEOUT)
        assert (out == 1).all() and (ex.zeros(3) == 0).all()


def test_arguments_are_checked() -> None:
    with BatchPoolExecutor(max_workers=1) as ex:
        with pytest.raises(TypeError, match="shape"):
            ex.empty("3")
        with pytest.raises(ValueError, match="shape"):
            ex.empty((2, -1))
        with pytest.raises(ValueError, match="order"):
            ex.empty(3, order="K")
        with pytest.raises(TypeError, match="dtype"):
            ex.empty(3, dtype=object)
        assert ex.zeros((2, 0)).shape == (2, 0)


def test_without_numpy_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy raises ImportError
    monkeypatch.delitem(sys.modules, "batchpool.shared")
    with BatchPoolExecutor(max_workers=1, backend="thread") as ex:
        with pytest.raises(ImportError, match=r"batchpool\[numpy\]"):
            ex.empty(3)


_SCRIPT = """
import sys, time
from batchpool import BatchPoolExecutor
from tests.integration.test_shared_arrays import fill
if __name__ == "__main__":
    ex = BatchPoolExecutor(max_workers=1, transport=sys.argv[1])
    out = ex.zeros(1000)
    ex.submit(fill, out, 1.0).result(30)
    print(out._bp_segment.name, " ".join(str(p.pid) for p in ex._processes.values()), flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("transport", ["shm", "pipe"])
def test_no_name_survives_a_parent_killed_with_sigkill_and_a_new_pool(transport: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, transport], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        name, *pids = proc.stdout.readline().split()
        workers = [psutil.Process(int(pid)) for pid in pids]
        assert _exists(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
        _, alive = psutil.wait_procs(workers, timeout=TIMEOUT)
        assert not alive, "workers outlived their killed parent"
        with BatchPoolExecutor(max_workers=1) as ex:  # its start sweeps dead owners' segments
            ex.submit(helpers.add_one, 1).result(TIMEOUT)
        assert not _exists(name)
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()
        shm.cleanup_prefix(f"bp-{proc.pid}-")
