"""Shared fixtures. The autouse ``no_leaks`` fixture checks every test leaves
none of its own child processes, threads or pool segments behind.

Only this test's own things count (``helpers.find_leaks``): another test run
on the same machine, or any other program using /dev/shm, must not fail it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import helpers


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    baseline = helpers.leak_baseline()
    yield
    leaks = helpers.find_leaks(baseline)
    assert not leaks, "; ".join(leaks)
