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
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import unittest
from pathlib import Path

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


def run_one(impl: str, mode: str, pattern: str | None, report: Path) -> None:
    """In this interpreter: run ``mode``'s tests with ``impl``; write outcomes to ``report``."""
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
    suite = unittest.TestSuite(tests)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
    outcomes: dict[str, str] = {t.id(): "ok" for t in tests}
    for case, _ in result.skipped:
        outcomes[case.id()] = "skip"
    for case, trace in result.failures + result.errors:
        name = case.id() if hasattr(case, "id") else str(case)  # a module or class fixture's _ErrorHolder has id()
        outcomes[name] = "FAIL " + trace.strip().splitlines()[-1][:300]
    for case, _ in result.unexpectedSuccesses:
        outcomes[case.id()] = "FAIL unexpected success"
    report.write_text(json.dumps(outcomes))


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
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "MODE", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, mode, report = args.child
        run_one(impl, mode, args.pattern, Path(report))
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
                    cmd = [sys.executable, __file__, "--child", impl, mode, str(report)]
                    if args.pattern:
                        cmd += ["-k", args.pattern]
                    t0 = time.monotonic()
                    subprocess.run(cmd, env=env, check=False)
                    outcomes = json.loads(report.read_text()) if report.exists() else {}
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
