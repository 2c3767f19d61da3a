from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batchpool import BatchPoolExecutor


@pytest.fixture(params=["process", "thread"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pool(backend: str) -> Iterator[Callable[..., BatchPoolExecutor]]:
    """Make pools of the parametrized backend; all are shut down afterwards."""
    made: list[BatchPoolExecutor] = []

    def make(**kwargs: Any) -> BatchPoolExecutor:
        kwargs.setdefault("max_workers", 2)
        ex = BatchPoolExecutor(backend=backend, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)
