"""Why an item could not be ingested. Every failure has a stable ``kind`` (for API clients and metrics),
a sentence for people, and whether retrying can help."""

from __future__ import annotations


class IngestError(Exception):
    """A failure of one item. ``permanent`` failures (bad input) are never retried."""

    kind: str = "ingest_error"
    permanent: bool = True

    def __init__(self, reason: str, *, kind: str | None = None, permanent: bool | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if kind is not None:
            self.kind = kind
        if permanent is not None:
            self.permanent = permanent

    def __str__(self) -> str:
        return self.reason


class BadInputError(IngestError):
    """The file itself is unusable: empty, truncated, not a video, unsupported codec, too long, too large."""

    kind = "bad_input"


class AccessError(IngestError):
    """The path cannot be read, or lies outside the allowed roots of a bulk job."""

    kind = "access"


class TransientError(IngestError):
    """Worth retrying with backoff (out of memory, a database hiccup, a model server not ready)."""

    kind = "transient"
    permanent = False


class StoreUnavailableError(TransientError):
    """The media store (object storage) did not answer, or answered with a server error: nothing was lost, and
    the same request later may succeed."""

    kind = "store_unavailable"
