"""A typed Python client for a running save-search server, sync (``Client``) and asyncio (``AsyncClient``), on httpx.

    from app.client import Client

    with Client("http://127.0.0.1:8000") as c:         # or $SAVE_SEARCH_SERVER; key: api_key= or $SAVE_SEARCH_API_KEY
        page = c.search("someone explains how to bake bread", k=5)
        for r in page.results:
            print(r.filename, r.score, r.segment and r.segment.text)
        accepted = c.upload("clip.mp4", progress=lambda sent, total: ...)
        job = c.wait_for_job(accepted.job_id)

Responses are the API's own pydantic models (``app.schemas``); errors are ``app.client.errors`` classes carrying
the API's ``detail`` and status. Importing this loads httpx and pydantic only (no model, index or database code).
"""

from app.schemas import (
    Health,
    JobItemOut,
    JobOut,
    Moment,
    Ready,
    SearchResponse,
    SearchResult,
    SegmentOut,
    UploadAccepted,
    VideoOut,
)

from ._common import FINISHED_JOB_STATUSES, ProgressCallback, RetryPolicy
from .aio import AsyncClient
from .errors import (
    APIError,
    AuthenticationRequired,
    ClientTimeout,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    SaveSearchError,
    ServerError,
    ServiceBusy,
    UnsupportedMedia,
    UploadTooSlow,
    WaitTimeout,
)
from .sync import Client

__all__ = [
    "FINISHED_JOB_STATUSES", "APIError", "AsyncClient", "AuthenticationRequired", "Client", "ClientTimeout",
    "ConnectionFailed", "Health", "InvalidRequest", "JobItemOut", "JobOut", "Moment", "NotFound", "PayloadTooLarge",
    "PermissionDenied", "ProgressCallback", "RateLimited", "Ready", "RetryPolicy", "SaveSearchError",
    "SearchResponse", "SearchResult", "SegmentOut", "ServerError", "ServiceBusy", "UnsupportedMedia",
    "UploadAccepted", "UploadTooSlow", "VideoOut", "WaitTimeout",
]
