"""CPython's own ``test_concurrent_futures``, run against batchpool and, as control, the stdlib.

Not part of the default test run (it takes minutes). The installed suite runs
in place; nothing of it is copied. batchpool's classes are substituted at run
time: ``concurrent.futures.ThreadPoolExecutor`` / ``ProcessPoolExecutor``
resolve to ``batchpool.ThreadPoolExecutor`` / ``ProcessPoolExecutor`` (the
package's lazy ``__getattr__`` is replaced before the tests import), so the
suite's mixins (``executor_type = futures.ThreadPoolExecutor``) and its direct
uses both get batchpool. Tests that start a fresh interpreter
(``assert_python_ok``, in isolated mode) get the same substitution through a
``.pth`` file this script puts in the interpreter's site-packages for the run
(active only while ``BATCHPOOL_CPYTHON_SUITE`` is set in the environment).

Each (implementation, mode) pair runs in its own interpreter; the report
lists, per mode, the counts for both and every test that passes with the
stdlib and not with batchpool.

Run it with a Python whose ``test`` package is installed (3.13 here), in a
venv holding batchpool's dependencies::

    /root/.pyenv/versions/3.13.0/bin/python -m venv /tmp/venv313
    /tmp/venv313/bin/pip install cloudpickle psutil rich typing-extensions
    cd <worktree> && /tmp/venv313/bin/python benchmarks/cpython_suite.py [--mode thread|process|all] [-k SUBSTRING]
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENV_FLAG = "BATCHPOOL_CPYTHON_SUITE"
PTH_NAME = "_batchpool_cpython_suite.pth"
MODES = {
    "thread": ("ThreadPoolMixin",),
    "process": ("ProcessPoolForkMixin", "ProcessPoolForkserverMixin", "ProcessPoolSpawnMixin"),
}


def substitute() -> None:
    """Make ``concurrent.futures``' two pool names resolve to batchpool's."""
    import concurrent.futures as cf

    sys.path.insert(0, os.environ.get(ENV_FLAG) or str(ROOT))
    stdlib_getattr = cf.__getattr__

    def getattr_(name: str) -> object:
        if name in ("ThreadPoolExecutor", "ProcessPoolExecutor"):
            import batchpool

            return getattr(batchpool, name)
        return stdlib_getattr(name)

    cf.__getattr__ = getattr_  # type: ignore[method-assign]
    for name in ("ThreadPoolExecutor", "ProcessPoolExecutor"):
        cf.__dict__.pop(name, None)


def _mode_of(test: unittest.TestCase) -> str:
    names = {cls.__name__ for cls in type(test).__mro__}
    for mode, mixins in MODES.items():
        if names.intersection(mixins):
            return mode
    return "other"


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    out: list[unittest.TestCase] = []
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


class _Recorder(unittest.TextTestResult):
    """Writes each test's outcome as it ends (a hung run still reports what it did)."""

    report: Path
    timeout: float

    def startTest(self, test: unittest.TestCase) -> None:
        faulthandler.dump_traceback_later(self.timeout, exit=True)  # a hung test ends the run
        self._write(test, "start")
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        faulthandler.dump_traceback_later(self.timeout, exit=True)  # a module teardown may hang too
        # A pool a test dropped without shutdown (kept by a reference cycle)
        # goes now, not at the module's teardown, which waits for every
        # process holding the resource tracker's pipe.
        gc.collect()

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._write(test, "ok")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._write(test, "skip")

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._write(test, "ok")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._write(test, "FAIL unexpected success")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._write(test, "FAIL " + self.failures[-1][1].strip().splitlines()[-1][:300])

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._write(test, "FAIL " + self.errors[-1][1].strip().splitlines()[-1][:300])

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._write(test, "FAIL (subtest) " + str(err[1])[:300])

    def _write(self, test: Any, outcome: str) -> None:
        name = test.id() if hasattr(test, "id") else str(test)  # module fixtures' _ErrorHolder too
        with self.report.open("a") as f:
            f.write(json.dumps([name, outcome]) + "\n")


def run_one(impl: str, mode: str, pattern: str | None, report: Path, timeout: float) -> None:
    """In this interpreter: run ``mode``'s tests with ``impl``; append outcomes to ``report``."""
    if impl == "batchpool":
        substitute()
    import test.test_concurrent_futures as package
    from test.test_concurrent_futures import util

    wanted = "batchpool" if impl == "batchpool" else "concurrent.futures"
    for mixin in (util.ThreadPoolMixin, util.ProcessPoolSpawnMixin):
        assert mixin.executor_type.__module__.startswith(wanted), mixin.executor_type

    loader = unittest.TestLoader()
    tests = [
        t
        for t in _flatten(loader.loadTestsFromModule(package))
        if (_mode_of(t) == mode or (mode == "thread" and _mode_of(t) == "other"))
        and (pattern is None or pattern in t.id())
    ]
    _Recorder.report = report
    _Recorder.timeout = timeout
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=1, resultclass=_Recorder)
    runner.run(unittest.TestSuite(tests))
    faulthandler.cancel_dump_traceback_later()


def _read_report(report: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    running = None
    if report.exists():
        for line in report.read_text().splitlines():
            name, outcome = json.loads(line)
            if outcome == "start":
                running = name
                continue
            if name == running:
                running = None
            if not outcomes.get(name, "").startswith("FAIL"):
                outcomes[name] = outcome
    if running is not None:
        outcomes[running] = "FAIL hung: the run was stopped here"
    return outcomes


def _install_pth() -> Path | None:
    """A .pth that substitutes in fresh interpreters too (only while ENV_FLAG is set)."""
    if sys.prefix == sys.base_prefix:
        return None  # not a venv: leave the system's site-packages alone
    path = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    code = (
        "import importlib.util as u; "
        f"s = u.spec_from_file_location('_batchpool_suite', {str(Path(__file__).resolve())!r}); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); m.substitute()"
    )
    path.write_text(f"import os; exec({code!r}) if os.environ.get({ENV_FLAG!r}) else None\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["thread", "process", "all"], default="all")
    parser.add_argument("-k", dest="pattern", help="only tests whose id contains this")
    parser.add_argument("--impl", choices=["batchpool", "stdlib", "both"], default="both")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one test may take (then the run stops)")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "MODE", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, mode, report = args.child
        run_one(impl, mode, args.pattern, Path(report), args.timeout)
        return 0
    modes = ["thread", "process"] if args.mode == "all" else [args.mode]
    impls = ["stdlib", "batchpool"] if args.impl == "both" else [args.impl]
    pth = _install_pth()
    results: dict[tuple[str, str], dict[str, str]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in modes:
                for impl in impls:
                    report = Path(tmp) / f"{impl}-{mode}.json"
                    env = dict(os.environ)
                    env.pop(ENV_FLAG, None)
                    if impl == "batchpool":
                        env[ENV_FLAG] = str(ROOT)
                    env["PYTHONPATH"] = str(ROOT)
                    cmd = [sys.executable, __file__, "--child", impl, mode, str(report), "--timeout", str(args.timeout)]
                    if args.pattern:
                        cmd += ["-k", args.pattern]
                    t0 = time.monotonic()
                    subprocess.run(cmd, env=env, check=False)
                    outcomes = _read_report(report)
                    results[(impl, mode)] = outcomes
                    print(f"{impl} {mode}: {_counts(outcomes)} in {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        if pth is not None:
            pth.unlink(missing_ok=True)
    print()
    for mode in modes:
        for impl in impls:
            print(f"{mode:8} {impl:10} {_counts(results.get((impl, mode), {}))}")
        if len(impls) == 2:
            std, ours = results.get(("stdlib", mode), {}), results.get(("batchpool", mode), {})
            worse = sorted(t for t, o in ours.items() if o.startswith("FAIL") and std.get(t) == "ok")
            print(f"  passes with the stdlib, fails with batchpool ({len(worse)}):")
            for t in worse:
                print(f"    {t}: {ours[t][5:]}")
    return 0


def _counts(outcomes: dict[str, str]) -> str:
    n = len(outcomes)
    failed = sum(1 for o in outcomes.values() if o.startswith("FAIL"))
    skipped = sum(1 for o in outcomes.values() if o == "skip")
    return f"{n} tests, {n - failed - skipped} passed, {failed} failed, {skipped} skipped"


if __name__ == "__main__":
    sys.exit(main())
