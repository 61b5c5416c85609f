"""The platform's error types: one base class and the few errors that cross a boundary.

Every error a user can cause derives from :class:`TunaError`; the CLI prints its message on one
line and exits with :attr:`TunaError.exit_code`. Servers map them to protocol statuses in one place.
"""

from __future__ import annotations


class TunaError(Exception):
    """An error caused by input, configuration or environment; its message names the bad value and the fix."""

    exit_code: int = 2


class ConfigError(TunaError, ValueError):
    """A recipe key, type or value is wrong (unknown key, wrong type, impossible size)."""


class OutputError(TunaError, OSError):
    """An output location cannot be written (missing permission, a file where a folder should be)."""


class TrainError(TunaError):
    """Training cannot start or continue as configured."""


class DataFormatError(TunaError, ValueError):
    """A corpus or eval file does not parse in its declared format; names the file and the record."""


class CorruptSample(TunaError, ValueError):
    """One sample of a batch job is unreadable (bad image bytes, empty or non-UTF-8 caption)."""

    def __init__(self, key: str, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"sample {key!r}: {reason}")
        self.key = key
        self.reason = reason
        self.kind = kind  # short label for counting: bad_image, empty_caption, long_caption, ...


class InvalidRequest(TunaError, ValueError):
    """A serving request is malformed; maps to gRPC INVALID_ARGUMENT / HTTP 400."""


class DatastoreUnavailable(TunaError, ConnectionError):
    """The vector datastore cannot be reached; maps to gRPC UNAVAILABLE / HTTP 503."""


class EngineUnavailable(TunaError, ConnectionError):
    """The LLM engine (vLLM's engine core) died or is restarting; maps to gRPC UNAVAILABLE / HTTP 503."""
