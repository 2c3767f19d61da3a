"""The shared-memory ring in one process: ordering, wrap-around, full and empty,
messages of any size (processes on both ends: tests/integration/test_ring_processes.py)."""

from __future__ import annotations

import multiprocessing
import os
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpool.transport import ring
from batchpool.transport.ring import Doorbell, Frames, Ring

pytestmark = pytest.mark.skipif(not ring.available(), reason="rings need memfd_create and eventfd (Linux)")

TIMEOUT = 30.0
SPAWN = multiprocessing.get_context("spawn")


def _pump(sender: Any, ring_: Ring, frames: Frames) -> None:
    """One producer step and one consumer step, in one process."""
    sender.flush()
    chunk = ring_.read()
    if chunk:
        frames.feed(chunk)


def _through(messages: list[bytes], capacity: int) -> list[bytes]:
    """Send messages through one ring with framing; the consumer reads as space frees."""
    r = Ring(capacity)
    try:
        sender = ring._Sender(r)
        frames = Frames()
        for message in messages:
            sender.add((message,))
        received: list[bytes] = []
        for _ in range(100_000):
            _pump(sender, r, frames)
            while frames:
                received.append(bytes(frames.pop()))
            if len(received) == len(messages):
                return received
        raise AssertionError(f"stuck after {len(received)} of {len(messages)} messages")
    finally:
        r.close()


def test_doorbell_adds_up_rings_and_take_resets() -> None:
    bell = Doorbell()
    try:
        assert bell.take() == 0
        bell.ring(3)
        bell.ring(4)
        assert bell.take() == 7
        assert bell.take() == 0
    finally:
        bell.close()


def test_an_empty_ring_reads_nothing() -> None:
    r = Ring(64)
    try:
        assert r.read() == b""
        r.write(memoryview(b"abc"))
        assert r.read() == b"", "bytes are not readable before they are published"
        r.publish()
        assert r.read() == b"abc"
    finally:
        r.close()


def test_a_full_ring_takes_nothing_more_until_the_reader_frees_space() -> None:
    r = Ring(64)
    try:
        assert r.write(memoryview(bytes(range(64)))) == 64
        assert r.write(memoryview(b"more")) == 0
        r.publish()
        assert r.write(memoryview(b"more")) == 0, "published is not the same as read"
        assert r.read() == bytes(range(64))
        assert r.write(memoryview(b"more")) == 4
    finally:
        r.close()


def test_bytes_wrap_around_the_end_of_the_ring_in_order() -> None:
    r = Ring(100)
    rng = random.Random(7)
    sent = bytearray()
    got = bytearray()
    try:
        for _ in range(500):
            piece = rng.randbytes(rng.randrange(1, 90))
            written = r.write(memoryview(piece))
            sent += piece[:written]
            r.publish()
            if rng.random() < 0.7:
                got += r.read()
        got += r.read()
    finally:
        r.close()
    assert len(sent) > 10 * 100, "the test did go round the ring many times"
    assert got == sent


@pytest.mark.parametrize("size", [0, 1, 248, 256, 257, 1000, 5000])
def test_a_message_the_size_of_the_ring_or_larger_goes_through(size: int) -> None:
    # 256 bytes of ring: a frame of 248 payload bytes fills it exactly.
    message = os.urandom(size)
    assert _through([message, b"after"], capacity=256) == [message, b"after"]


def test_frames_reassemble_messages_cut_anywhere() -> None:
    messages = [b"", b"a", os.urandom(300), b"", os.urandom(17)]
    stream = b"".join(b"".join(map(bytes, Frames.frame((m[:5], m[5:])))) for m in messages)
    for cut in range(len(stream) + 1):
        for second in (cut, (cut + len(stream)) // 2):
            frames = Frames()
            for piece in (stream[:cut], stream[cut:second], stream[second:]):
                frames.feed(piece)
            got = []
            while frames:
                got.append(bytes(frames.pop()))
            assert got == messages, f"cut at {cut} and {second}"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=700), max_size=30), st.integers(min_value=16, max_value=512))
def test_any_messages_arrive_whole_and_in_order(messages: list[bytes], capacity: int) -> None:
    assert _through(messages, capacity) == messages
