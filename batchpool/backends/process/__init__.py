"""Process backend: ``manager`` (the one thread that feeds and watches the workers),
``workers`` (starting, recording and stopping worker processes), ``payload``
(a batch made ready for the wire)."""

from .manager import ProcessBackend as ProcessBackend

__all__ = ["ProcessBackend"]
