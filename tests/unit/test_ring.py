"""The shared-memory ring: ordering, wrap-around, full and empty, any message size,
real producer and consumer processes, and waiting without spinning."""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import selectors
import signal
import time
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpool.transport import ring
from batchpool.transport.ring import Doorbell, Frames, Ring, RingChannel, RingWorkerChannel

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


# -- across processes -------------------------------------------------------------------


def echo_worker(end: Any) -> None:
    """A worker side that sends back every message until told to stop."""
    channel = RingWorkerChannel(end)
    while True:
        message = channel.recv(None)
        assert message is not None
        if bytes(message) == b"stop":
            return
        channel.send(bytes(message))


def recv_forever(end: Any) -> None:
    """A worker side that waits for a message that never comes."""
    channel = RingWorkerChannel(end)
    try:
        channel.recv(None)
    except EOFError:
        os._exit(17)  # the parent's end is gone: the exit code says so


def write_half_and_hang(end: Any) -> None:
    """Starts a message larger than the ring, then stops dead (to be killed)."""
    channel = RingWorkerChannel(end)
    channel._out.add((b"x" * 10_000,))
    channel._out.flush()
    time.sleep(TIMEOUT)


def _start(target: Any, channel: RingChannel) -> Any:
    process = SPAWN.Process(target=target, args=(channel.worker_end(),))
    process.start()
    channel.after_start()
    return process


def _exchange(channel: RingChannel, messages: list[bytes]) -> list[bytes]:
    """Drive the parent end as the pool's manager does: one selector, never blocking."""
    for message in messages:
        channel.send(message)
    received: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(channel.readable_fd, selectors.EVENT_READ, "read")
        while len(received) < len(messages):
            writing = channel.has_output
            if writing:
                selector.register(channel.writable_fd, channel.writable_event, "write")
            events = selector.select(max(0.0, deadline - time.monotonic()))
            assert events, f"no progress after {len(received)} of {len(messages)} messages"
            if writing:
                selector.unregister(channel.writable_fd)
            for key, _ in events:
                if key.data == "write":
                    channel.flush()
                else:
                    while channel.poll():
                        received.append(bytes(channel.recv()))
    return received


def test_a_producer_and_a_consumer_process_exchange_messages_of_every_size() -> None:
    rng = random.Random(3)
    sizes = [0, 1, 4096 - 8, 4096, 3 * 4096 + 5] + [rng.randrange(0, 9000) for _ in range(300)]
    messages = [rng.randbytes(size) for size in sizes]
    channel = RingChannel(capacity=4096)
    process = _start(echo_worker, channel)
    try:
        assert _exchange(channel, messages) == messages
        channel.send(b"stop")
        process.join(TIMEOUT)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join(TIMEOUT)
        channel.close()


def test_a_waiting_reader_uses_no_cpu_and_sees_the_parent_go() -> None:
    channel = RingChannel(capacity=4096)
    process = _start(recv_forever, channel)
    try:
        worker = psutil.Process(process.pid)
        # Let it get to its wait: its CPU time stops growing once start-up is over.
        deadline = time.monotonic() + TIMEOUT
        last = -1.0
        while time.monotonic() < deadline:
            now = sum(worker.cpu_times()[:2])
            if now == last:
                break
            last = now
            time.sleep(0.2)
        before = sum(worker.cpu_times()[:2])
        time.sleep(1.0)  # the measured interval, not a synchronisation
        spent = sum(worker.cpu_times()[:2]) - before
        assert spent < 0.05, f"a waiting reader used {spent:.3f} s of CPU in 1 s"
        channel.close()  # the lifeline's write end goes: EOF over there
        process.join(TIMEOUT)
        assert process.exitcode == 17
    finally:
        if process.is_alive():
            process.kill()
            process.join(TIMEOUT)
        channel.close()


def test_a_writer_killed_mid_message_leaves_nothing_to_read() -> None:
    channel = RingChannel(capacity=4096)
    process = _start(write_half_and_hang, channel)
    try:
        readable, _, _ = select.select([channel.readable_fd], [], [], TIMEOUT)
        assert readable, "the writer never wrote"
        assert not channel.poll()  # takes in the first 4096 bytes: not a whole message
        os.kill(process.pid, signal.SIGKILL)
        process.join(TIMEOUT)
        assert not channel.poll(), "half a message must never be handed over"
    finally:
        if process.is_alive():
            process.kill()
            process.join(TIMEOUT)
        channel.close()
    fresh = RingChannel(capacity=4096)  # what a replacement worker gets
    process = _start(echo_worker, fresh)
    try:
        assert _exchange(fresh, [b"hello"]) == [b"hello"]
        fresh.send(b"stop")
        process.join(TIMEOUT)
    finally:
        if process.is_alive():
            process.kill()
            process.join(TIMEOUT)
        fresh.close()
