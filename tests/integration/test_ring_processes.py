"""Rings between real processes: a producer and a consumer exchanging messages of every
size, a reader waiting without spinning and seeing its parent go, a writer killed
mid-message."""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import selectors
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest

from batchpool.transport import ring
from batchpool.transport.ring import RingChannel, RingWorkerChannel

pytestmark = pytest.mark.skipif(not ring.available(), reason="rings need memfd_create and eventfd (Linux)")

TIMEOUT = 30.0
SPAWN = multiprocessing.get_context("spawn")


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
    """A worker side that says it is waiting, then waits for a message that never comes."""
    channel = RingWorkerChannel(end)
    channel.send(b"waiting")
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


@contextmanager
def _worker(target: Any, capacity: int = 4096) -> Iterator[tuple[RingChannel, Any]]:
    """A channel and a spawned process running ``target`` on its worker end; both gone after."""
    channel = RingChannel(capacity=capacity)
    process = SPAWN.Process(target=target, args=(channel.worker_end(),))
    process.start()
    channel.after_start()
    try:
        yield channel, process
    finally:
        if process.is_alive():
            process.kill()
            process.join(TIMEOUT)
        channel.close()


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
    with _worker(echo_worker) as (channel, process):
        assert _exchange(channel, messages) == messages
        channel.send(b"stop")
        process.join(TIMEOUT)
        assert process.exitcode == 0


def test_a_waiting_reader_uses_no_cpu_and_sees_the_parent_go() -> None:
    with _worker(recv_forever) as (channel, process):
        worker = psutil.Process(process.pid)
        readable, _, _ = select.select([channel.readable_fd], [], [], TIMEOUT)
        assert readable and channel.poll() and bytes(channel.recv()) == b"waiting"
        before = sum(worker.cpu_times()[:2])
        time.sleep(1.0)  # the measured interval, not a synchronisation
        spent = sum(worker.cpu_times()[:2]) - before
        assert spent < 0.05, f"a waiting reader used {spent:.3f} s of CPU in 1 s"
        channel.close()  # the lifeline's write end goes: EOF over there
        process.join(TIMEOUT)
        assert process.exitcode == 17


def test_a_writer_killed_mid_message_leaves_nothing_to_read() -> None:
    with _worker(write_half_and_hang) as (channel, process):
        readable, _, _ = select.select([channel.readable_fd], [], [], TIMEOUT)
        assert readable, "the writer never wrote"
        assert not channel.poll()  # takes in the first 4096 bytes: not a whole message
        os.kill(process.pid, signal.SIGKILL)
        process.join(TIMEOUT)
        assert not channel.poll(), "half a message must never be handed over"
    with _worker(echo_worker) as (fresh, process):  # what a replacement worker gets
        assert _exchange(fresh, [b"hello"]) == [b"hello"]
        fresh.send(b"stop")
        process.join(TIMEOUT)
