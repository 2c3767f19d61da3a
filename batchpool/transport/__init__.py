"""How bytes travel between the parent and one worker process.

``base`` is the interface; ``pipe`` is the implementation over OS pipes.
Only the process backend uses this package; it imports nothing above it.
"""

from .base import Channel as Channel
from .base import WorkerChannel as WorkerChannel
from .pipe import PipeTransport as PipeTransport

__all__ = ["Channel", "PipeTransport", "WorkerChannel"]
