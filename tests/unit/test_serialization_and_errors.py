from __future__ import annotations

import pickle
import threading
from concurrent.futures.process import BrokenProcessPool

from batchpool import RemoteTraceback, TransportError, WorkerCrashedError, serialization
from batchpool.errors import describe_exit
from batchpool.jobs import ExceptionWithTraceback


def test_plain_objects_use_plain_pickle() -> None:
    data = serialization.dumps([1, "a", (2.0,)])
    assert pickle.loads(data) == [1, "a", (2.0,)]


def test_closures_fall_back_to_cloudpickle() -> None:
    k = 3
    assert serialization.loads(serialization.dumps(lambda x: x * k))(2) == 6


def test_dumps_each_isolates_the_bad_items() -> None:
    data, bad, _ = serialization.dumps_each([1, threading.Lock(), 3, threading.Lock()])
    assert serialization.loads_each(data) == [1, 3]
    assert sorted(bad) == [1, 3]
    assert all(isinstance(e, TypeError) for e in bad.values())


def test_exception_travels_with_its_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        wrapped = ExceptionWithTraceback(exc)
    back = pickle.loads(pickle.dumps(wrapped))
    assert type(back) is KeyError and back.args == ("missing",)
    assert isinstance(back.__cause__, RemoteTraceback)
    assert 'raise KeyError("missing")' in back.__cause__.tb


def test_crash_errors_are_broken_process_pool_and_say_why() -> None:
    assert issubclass(WorkerCrashedError, BrokenProcessPool)
    assert issubclass(TransportError, BrokenProcessPool)
    assert "SIGSEGV" in str(WorkerCrashedError(12, -11)) and "native code" in str(WorkerCrashedError(12, -11))
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(None) == "exit status unknown"
    assert "pid 12" in str(WorkerCrashedError(12, -9))
