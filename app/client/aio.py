"""The asyncio client: ``async with AsyncClient("http://host:8000") as c: await c.search("...")``. The same methods
as ``Client``, awaited; the page iterators are async iterators."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import IO, Any

import httpx

import app.client._common as common
from app.schemas import Health, JobOut, Ready, SearchResponse, SearchResult, UploadAccepted, VideoOut

from .errors import WaitTimeout, error_from


class AsyncClient:
    """A save-search server's API for asyncio code: ``Client``'s methods and rules (defaults, retries, errors),
    awaited. Many requests can be in flight at once (``asyncio.gather``), up to ``max_connections``."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: httpx.Timeout | float = common.DEFAULT_TIMEOUT,
                 upload_timeout: httpx.Timeout | float = common.UPLOAD_TIMEOUT,
                 retry: common.RetryPolicy | None = None, max_connections: int = 16,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = common.resolve_server(base_url)
        self.retry = retry or common.RetryPolicy()
        self.upload_timeout = upload_timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=common.default_headers(common.resolve_api_key(api_key)), timeout=timeout,
            transport=transport, verify=common.tls_verify(self.base_url),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------------------------------------- transport
    async def _request(self, method: str, path: str, *, idempotent: bool = True,
                       retry_statuses: frozenset[int] = common.RETRY_STATUSES,
                       body: common.UploadBody | None = None, progress: common.ProgressCallback | None = None,
                       **kwargs: Any) -> httpx.Response:
        """Send, retrying as the policy allows; the response of a success, else the typed error."""
        attempt = 0
        while True:
            if body is not None:
                body.rewind()
                kwargs.update(content=_async_chunks(body, progress), headers=body.headers)
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                wait = common.transport_wait(exc, attempt, self.retry, idempotent)
                if wait is None or (body is not None and not body.can_retry):
                    raise common.transport_error(self.base_url, exc) from exc
            else:
                if response.is_success:
                    return response
                wait = common.status_wait(response, attempt, self.retry, retry_statuses)
                if wait is None or (body is not None and not body.can_retry):
                    raise error_from(response, common.retry_after_s(response))
            await self._sleep(wait)
            attempt += 1

    # ------------------------------------------------------------------------------------------------ search
    async def search(self, q: str, k: int = 10, *, page_token: str | None = None,
                     min_score: float | None = None, moments: int | None = None) -> SearchResponse:
        """One page of results (``k`` at most), best first, each with up to ``moments`` places in the video that
        match (the server's default when None); ``next_page_token`` asks for the next page."""
        params: dict[str, Any] = {"q": q, "k": k}
        if page_token is not None:
            params["page_token"] = page_token
        if min_score is not None:
            params["min_score"] = min_score
        if moments is not None:
            params["moments"] = moments
        return SearchResponse.model_validate((await self._request("GET", "/v1/search", params=params)).json())

    async def search_pages(self, q: str, k: int = 10, *, min_score: float | None = None,
                     max_pages: int | None = None) -> AsyncIterator[SearchResponse]:
        """Page after page of the same search, following ``next_page_token`` (pages stay stable while new videos
        arrive: the token pins the collection as of the first page)."""
        token: str | None = None
        pages = 0
        while max_pages is None or pages < max_pages:
            page = await self.search(q, k, page_token=token, min_score=min_score)
            pages += 1
            yield page
            token = page.next_page_token
            if token is None or not page.results:
                return

    async def search_results(self, q: str, *, page_size: int = 50, min_score: float | None = None,
                       limit: int | None = None) -> AsyncIterator[SearchResult]:
        """Results one by one across pages, at most ``limit``."""
        count = 0
        async for page in self.search_pages(q, page_size, min_score=min_score):
            for result in page.results:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield result

    # ------------------------------------------------------------------------------------------------ videos
    async def get_video(self, video_id: int) -> VideoOut:
        return VideoOut.model_validate((await self._request("GET", f"/v1/videos/{int(video_id)}")).json())

    async def list_videos(self, limit: int = 50, offset: int = 0) -> list[VideoOut]:
        """Videos, newest first."""
        data = (await self._request("GET", "/v1/videos", params={"limit": limit, "offset": offset})).json()
        return [VideoOut.model_validate(v) for v in data]

    async def delete_video(self, video_id: int) -> None:
        """Remove it from the index and the database (``NotFound`` if there is no such video)."""
        await self._request("DELETE", f"/v1/videos/{int(video_id)}", idempotent=False)

    def media_url(self, video: int | VideoOut | SearchResult) -> str:
        """Absolute URL of the video file (HTTP ranges work). From a result it is the URL the server handed out
        (signed when reads need a key, so a player can open it); from an id, the plain URL (send the key)."""
        return common.absolute_url(self.base_url, common.media_path(video, "media"))

    def thumbnail_url(self, video: int | VideoOut | SearchResult) -> str:
        return common.absolute_url(self.base_url, common.media_path(video, "thumbnail"))

    # ------------------------------------------------------------------------------------------------ uploads
    async def upload(self, source: str | os.PathLike[str] | IO[bytes], filename: str | None = None, *,
               progress: common.ProgressCallback | None = None) -> UploadAccepted:
        """Upload one video, streamed from a path or a binary file object (read in 1 MiB blocks, never whole).

        ``progress(sent, total)`` is called as blocks go out (``total`` None when the size is unknown; a retry
        starts again from 0). A transient failure (connection dropped, 408, 429, 502-504) sends the whole file
        again, at most ``retry.retries`` times: safe, because the server recognises a file it already has by its
        content (``duplicate``). A file object that cannot seek is sent once."""
        body, owned = common.open_upload(source, filename)
        try:
            response = await self._request("POST", "/v1/videos", body=body, progress=progress,
                                     retry_statuses=common.UPLOAD_RETRY_STATUSES, timeout=self.upload_timeout)
        finally:
            if owned:
                body.file.close()
        return UploadAccepted.model_validate(response.json())

    # ---------------------------------------------------------------------------------------------------- jobs
    async def create_ingest_job(self, paths: Sequence[str | os.PathLike[str]], recursive: bool = False) -> JobOut:
        """A bulk job over files or folders on the server's disk (absolute paths under its
        ``SAVE_SEARCH_ALLOWED_ROOTS``)."""
        body = {"paths": [os.fspath(p) for p in paths], "recursive": recursive}
        response = await self._request("POST", "/v1/ingest-jobs", json=body, idempotent=False)
        return JobOut.model_validate(response.json())

    async def get_job(self, job_id: int) -> JobOut:
        return JobOut.model_validate((await self._request("GET", f"/v1/jobs/{int(job_id)}")).json())

    async def wait_for_job(self, job_id: int, *, poll_s: float = 1.0, timeout: float | None = None,
                     progress: Callable[[JobOut], None] | None = None) -> JobOut:
        """Poll until the job is done, failed or cancelled; ``progress(job)`` after every poll. ``WaitTimeout``
        after ``timeout`` seconds (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if progress:
                progress(job)
            if job.status in common.FINISHED_JOB_STATUSES:
                return job
            if deadline is not None and time.monotonic() + poll_s > deadline:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout:g} s")
            await self._sleep(poll_s)

    # -------------------------------------------------------------------------------------------------- health
    async def health(self) -> Health:
        """Liveness (open to everyone)."""
        return Health.model_validate((await self._request("GET", "/healthz")).json())

    async def ready(self) -> Ready:
        """Readiness: model mode and why, videos, queue depth, auth mode."""
        return Ready.model_validate((await self._request("GET", "/readyz")).json())


async def _async_chunks(body: common.UploadBody, progress: common.ProgressCallback | None) -> AsyncIterator[bytes]:
    """``UploadBody.chunks`` for asyncio: the file is read in a worker thread (the event loop never waits on the
    disk); ``progress`` is called on the event loop."""
    sent = 0
    if progress:
        progress(0, body.size)
    yield body.head
    while block := await asyncio.to_thread(body.file.read, common.CHUNK_BYTES):
        yield block
        sent += len(block)
        if progress:
            progress(sent, body.size)
    yield body.tail
