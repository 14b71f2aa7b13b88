"""The client's errors: one base class, the API's answers by status (each carrying the API's error body), and the
failures to get an answer at all (no connection, a timeout)."""

from __future__ import annotations

from typing import Any

import httpx


class SaveSearchError(Exception):
    """Anything the client raises."""


class ConnectionFailed(SaveSearchError):
    """The server could not be reached (refused, unknown host, connection dropped), retries included."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url, self.cause = url, cause
        reason = str(cause) or cause.__class__.__name__
        super().__init__(f"cannot reach the save-search server at {url}: {reason}")


class ClientTimeout(SaveSearchError):
    """The server took longer than the client's timeout to answer (or to accept the data sent)."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url, self.cause = url, cause
        super().__init__(f"the save-search server at {url} did not answer in time ({cause.__class__.__name__})")


class WaitTimeout(SaveSearchError):
    """``wait_for_job`` gave up before the job finished (the job itself goes on)."""


class APIError(SaveSearchError):
    """The API answered with an error status. ``detail`` is the sentence of its error body (``{"detail": ...}``),
    ``body`` the whole body as parsed (JSON) or text, ``retry_after`` the seconds it asked to wait (429/503)."""

    status: int

    def __init__(self, status: int, detail: str, body: Any, method: str, url: str,
                 retry_after: float | None = None) -> None:
        self.status, self.detail, self.body = status, detail, body
        self.method, self.url, self.retry_after = method, url, retry_after
        super().__init__(f"{status} {_reason(status)}: {detail}" if detail else f"{status} {_reason(status)}")


class InvalidRequest(APIError):
    """400 or 422: the request was refused as malformed (the detail says which parameter and why)."""


class AuthenticationRequired(APIError):
    """401: the server needs an API key and none was sent (``api_key=`` or ``SAVE_SEARCH_API_KEY``)."""


class PermissionDenied(APIError):
    """403: the key is not valid, or writes without a key come only from the server's own machine, or bulk
    ingest is off on the server."""


class NotFound(APIError):
    """404: no such video or job."""


class UploadTooSlow(APIError):
    """408: the server cut an upload that sent nothing for too long (transient: uploads retry it)."""


class PayloadTooLarge(APIError):
    """413: the file is larger than the server accepts."""


class UnsupportedMedia(APIError):
    """415: the file is not a video the server can read."""


class RateLimited(APIError):
    """429, still refused after the client's retries."""


class ServiceBusy(APIError):
    """503 with ``Retry-After``, still refused after the client's retries (the search queue stayed full)."""


class ServerError(APIError):
    """500 and other 5xx: the server failed (its log has the cause)."""


BY_STATUS: dict[int, type[APIError]] = {400: InvalidRequest, 401: AuthenticationRequired, 403: PermissionDenied,
                                        404: NotFound, 408: UploadTooSlow, 413: PayloadTooLarge,
                                        415: UnsupportedMedia, 422: InvalidRequest, 429: RateLimited,
                                        503: ServiceBusy}


def _reason(status: int) -> str:
    try:
        return httpx.codes(status).name.replace("_", " ").title()
    except ValueError:
        return "Error"


def error_from(response: httpx.Response, retry_after: float | None = None) -> APIError:
    """The typed error for an error response, with the API's ``detail`` (or the raw text of a non-JSON body)."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    detail = body.get("detail") if isinstance(body, dict) else body
    if not isinstance(detail, str):
        detail = "" if detail is None else str(detail)
    status = response.status_code
    cls = BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(status, detail.strip(), body, response.request.method, str(response.request.url), retry_after)
