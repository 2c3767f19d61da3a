"""How bytes travel between the parent and one worker process.

``base`` is the channel interface; ``ring`` implements it with shared-memory
rings and eventfd doorbells (the default, Linux), ``pipe`` with OS pipes
(everywhere, and ``transport="pipe"``); ``shm`` holds the segments large
buffers travel in, out of band (with ``arena``'s reusable blocks and
``shm_names``'s naming and sweeps under it). Only the process backend uses this package;
it imports nothing above it.
"""

from .base import Channel as Channel
from .base import WorkerChannel as WorkerChannel
from .pipe import PipeTransport as PipeTransport

__all__ = ["Channel", "PipeTransport", "WorkerChannel"]
