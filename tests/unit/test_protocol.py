"""The wire format: per-job outcomes (one bad value fails only its job), batch headers."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batchpool import protocol
from batchpool.errors import TransportError
from batchpool.jobs import ChunkResult, ExceptionWithTraceback
from tests import helpers


def roundtrip(outcomes: list[tuple[bool, Any]], flags: int = protocol.FINAL) -> list[tuple[bool, Any]]:
    message = b"".join(protocol.encode_outcome(9, 4, outcomes, 0.25, flags))
    (batch_id, start, count, got_flags, run_time), decoded = protocol.decode_outcome(message)
    assert (batch_id, start, count, got_flags, run_time) == (9, 4, len(outcomes), flags, 0.25)
    return decoded


def test_a_value_the_parent_cannot_unpickle_fails_only_its_job() -> None:
    outcomes = [(True, 1), (True, helpers.ErrorAtUnpickle()), (True, [3]), (True, "x")]
    decoded = roundtrip(outcomes)
    assert decoded[0] == (True, 1) and decoded[2] == (True, [3]) and decoded[3] == (True, "x")
    ok, error = decoded[1]
    assert not ok and isinstance(error, TransportError) and "unpickled in the parent" in str(error)


def test_a_value_that_does_not_pickle_fails_only_its_job() -> None:
    decoded = roundtrip([(True, helpers.ErrorAtPickle()), (True, 2)])
    assert not decoded[0][0] and decoded[1] == (True, 2)


def test_exceptions_travel_with_their_traceback_or_as_a_stand_in() -> None:
    try:
        raise KeyError("k")
    except KeyError as exc:
        wrapped = ExceptionWithTraceback(exc)
    unpicklable = ExceptionWithTraceback(helpers.Unpicklable())
    decoded = roundtrip([(False, wrapped), (False, unpicklable)])
    assert isinstance(decoded[0][1], KeyError) and "KeyError" in decoded[0][1].__cause__.tb
    assert type(decoded[1][1]).__name__ == "RemoteError"


def test_a_map_chunk_with_an_unpicklable_item_keeps_the_others() -> None:
    chunk = ChunkResult([1, helpers.ErrorAtPickle(), 3], {})
    ((ok, value),) = roundtrip([(True, chunk)])
    assert ok and value.values[0] == 1 and value.values[2] == 3 and 1 in value.errors


def test_an_unreadable_payload_fails_every_job_of_the_message() -> None:
    parts = protocol.encode_outcome(1, 0, [(True, 1), (True, 2)], 0.0, protocol.FINAL)
    message = parts[0] + parts[1] + b"\x80\x05garbage"
    _, decoded = protocol.decode_outcome(message)
    assert [ok for ok, _ in decoded] == [False, False]
    assert all(isinstance(e, TransportError) for _, e in decoded)


def test_batch_headers_carry_the_item_time_limit_and_the_callable_cache_flags() -> None:
    parts = protocol.encode_batch(5, 1, b"fn", b"", b"calls", protocol.FN_BY_VALUE, b"d" * 16, 0.5)
    message = b"".join(parts)
    batch_id, kind, fn_len, start, flags, digest = protocol.decode_batch_header(message)
    assert (batch_id, kind, fn_len, flags, digest) == (5, 1, 2, protocol.FN_BY_VALUE, b"d" * 16)
    assert message[start : start + fn_len] == b"fn"
    assert protocol.batch_item_timeout(message) == 0.5
    assert protocol.batch_item_timeout(b"".join(protocol.encode_batch(5, 1, b"", b"", b""))) is None
    assert protocol.decode_skipped(protocol.encode_skipped(77)) == 77


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=10,
)


@given(st.lists(st.tuples(st.booleans(), _values), max_size=20))
def test_any_outcomes_round_trip(raw: list[tuple[bool, Any]]) -> None:
    outcomes = [(ok, v if ok else ExceptionWithTraceback(ValueError(repr(v)))) for ok, v in raw]
    decoded = roundtrip(outcomes)
    for (ok, v), (got_ok, got) in zip(raw, decoded, strict=True):
        assert got_ok == ok
        if ok:
            assert got == v
        else:
            assert isinstance(got, ValueError) and str(got) == repr(v)
