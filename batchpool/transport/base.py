"""The transport interface: a message channel between the parent and a worker.

A message is sent as one or more parts (sent back to back, received as one
message: large pickles need not be joined into one more copy first); framing
is the transport's business.
The parent side never blocks on a send (its one manager thread also has to
read results and watch sentinels, and a blocking send to a worker that is
itself blocked sending results would deadlock both), so ``send`` queues what
does not fit and ``flush`` writes more when the channel is writable.
"""

from __future__ import annotations

import abc
import selectors
from typing import Any, TypeAlias

#: A message as a channel hands it over: bytes, or a view of a larger read.
Message: TypeAlias = "bytes | bytearray | memoryview"


class Channel(abc.ABC):
    """Parent end of the channel to one worker."""

    #: The selector event on ``writable_fd`` that means "room to send".
    writable_event = selectors.EVENT_WRITE

    @abc.abstractmethod
    def send(self, *parts: Message) -> None:
        """Queue one message, the concatenation of ``parts``, for the worker; never blocks."""

    @abc.abstractmethod
    def flush(self) -> bool:
        """Write queued bytes without blocking; True when nothing is left queued."""

    @property
    @abc.abstractmethod
    def has_output(self) -> bool:
        """True while queued bytes wait for the channel to become writable."""

    @abc.abstractmethod
    def recv(self) -> Message:
        """Read one message; call when ``readable_fd`` is readable.

        Raises:
            EOFError: the worker's end is closed.
        """

    @abc.abstractmethod
    def poll(self) -> bool:
        """True when a message (or EOF) can be read without blocking."""

    def buffered(self) -> bool:
        """True when a message can be read without asking the system (no syscall).

        After ``readable_fd`` was readable and everything buffered was read,
        the selector says when more arrives. By default the same as ``poll``.
        """
        return self.poll()

    @property
    @abc.abstractmethod
    def readable_fd(self) -> int:
        """File descriptor to wait on for messages from the worker."""

    @property
    @abc.abstractmethod
    def writable_fd(self) -> int:
        """File descriptor to wait on for room to send (while ``has_output``)."""

    @abc.abstractmethod
    def worker_end(self) -> Any:
        """The picklable object a worker process turns into its WorkerChannel."""

    def after_start(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Called once the worker process has started and holds its end."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the parent's resources of this channel (idempotent)."""


class WorkerChannel(abc.ABC):
    """Worker end of the channel; blocking calls are fine on this side."""

    @abc.abstractmethod
    def recv(self, timeout: float | None) -> Message | None:
        """Next message from the parent, or None after ``timeout`` seconds.

        Raises:
            EOFError: the parent's end is closed (the parent is gone).
        """

    @abc.abstractmethod
    def send(self, *parts: Message) -> None:
        """Send one message, the concatenation of ``parts``, to the parent (may block until it reads)."""
