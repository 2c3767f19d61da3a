"""Process backend: ``manager`` (the one thread that feeds and watches the workers),
``events`` (its handlers for worker messages, deaths and timeouts), ``balance``
(resizing, and moving work to idle workers), ``growth`` (workers started as
submits need them), ``workers`` (starting, recording
and stopping worker processes), ``payload`` (a batch made ready for the wire)."""

from .manager import ProcessBackend as ProcessBackend

__all__ = ["ProcessBackend"]
