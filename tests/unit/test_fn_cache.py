"""Callables sent by value: the parent's mirror and the worker's cache agree, and what goes by reference."""

from __future__ import annotations

import functools
import operator

from hypothesis import given
from hypothesis import strategies as st

from batchpool import protocol, serialization


@given(st.lists(st.integers(0, 9), max_size=200), st.integers(1, 4))
def test_the_mirror_sends_bytes_exactly_when_the_worker_lacks_them(keys: list[int], size: int) -> None:
    mirror = protocol.FnCacheMirror(size)
    cache = protocol.FnCache(size)
    for key in keys:
        digest = bytes([key]) * 16
        blob = serialization.dumps(key) if mirror.needs_bytes(digest) else b""
        cache.receive(digest, blob)
        assert cache.get(digest) == key  # never a miss, never a stale entry


def test_a_batch_header_carries_the_flag_and_the_digest() -> None:
    digest = serialization.digest(b"fn")
    parts = protocol.encode_batch(3, 0, b"", b"", b"calls", protocol.FN_BY_VALUE, digest)
    batch_id, _, fn_len, _, flags, got = protocol.decode_batch_header(b"".join(parts))
    assert (batch_id, fn_len, flags, got) == (3, 0, protocol.FN_BY_VALUE, digest)


def test_importable_callables_go_by_reference_and_the_rest_by_value() -> None:
    assert serialization.pickle_callable(operator.add)[1] is False
    assert serialization.pickle_callable(functools.partial(operator.add, 1))[1] is False
    assert serialization.pickle_callable(lambda: 0)[1] is True

    def nested() -> None:
        pass

    assert serialization.pickle_callable(nested)[1] is True


def test_a_callable_marked_by_value_goes_by_value_with_its_partials() -> None:
    fn = operator.truediv
    serialization.send_by_value(fn)
    assert serialization.pickle_callable(fn)[1] is True
    assert serialization.pickle_callable(functools.partial(fn, 1))[1] is True
    assert serialization.loads(serialization.pickle_callable(fn)[0])(6, 3) == 2
