"""HTTP checks of a running save-search container, for docker/ci-smoke.sh (standard library only).

    smoke_checks.py wait URL TIMEOUT_S                 # until URL answers 200; prints the seconds it took
    smoke_checks.py ingest BASE MANIFEST STATE [KEY]   # readyz, upload, job done, search, thumbnail, range
    smoke_checks.py again BASE STATE                   # a new container on the same volumes finds it again
    smoke_checks.py bulk BASE MANIFEST KEY             # bulk job over /media, then every clip is found

Every failure exits 1 with one line that says what was expected and what came back.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

TIMEOUT_JOB_S = 600


class CheckFailed(Exception):
    pass


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str, headers: dict | None = None, expect: int = 200) -> dict:
    status, _, body = request("GET", url, headers=headers)
    if status != expect:
        raise CheckFailed(f"GET {url}: expected {expect}, got {status}: {body[:300]!r}")
    return json.loads(body)


def auth(key: str | None) -> dict:
    return {"X-API-Key": key} if key else {}


def wait(url: str, timeout_s: float) -> float:
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout_s:
        try:
            status, _, body = request("GET", url, timeout=5)
            if status == 200:
                return time.monotonic() - start
            last = f"HTTP {status}: {body[:200]!r}"
        except (OSError, urllib.error.URLError) as e:
            last = repr(e)
        time.sleep(1)
    raise CheckFailed(f"{url} did not answer 200 within {timeout_s:.0f} s (last: {last})")


def upload(base: str, path: Path, key: str | None) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, _, out = request("POST", f"{base}/v1/videos", body,
                             {"Content-Type": f"multipart/form-data; boundary={boundary}", **auth(key)}, timeout=120)
    if status != 202:
        raise CheckFailed(f"upload of {path.name}: expected 202, got {status}: {out[:300]!r}")
    return json.loads(out)


def wait_job(base: str, job_id: int, timeout_s: float = TIMEOUT_JOB_S) -> dict:
    start = time.monotonic()
    job: dict = {}
    while time.monotonic() - start < timeout_s:
        job = get_json(f"{base}/v1/jobs/{job_id}")
        if job["status"] in ("done", "failed") and job["queued"] == 0 and job["running"] == 0:
            break
        time.sleep(2)
    else:
        raise CheckFailed(f"job {job_id} not finished after {timeout_s} s: {json.dumps(job)[:600]}")
    if job["status"] != "done" or job["failed"]:
        errors = [(i["filename"], i["error"]) for i in job["items"] if i["error"]]
        raise CheckFailed(f"job {job_id} ended {job['status']} with {job['failed']} failed item(s): {errors}")
    print(f"  job {job_id}: {job['done']}/{job['total']} done in {time.monotonic() - start:.1f} s")
    return job


def find(base: str, query: str, filename: str, top: int = 1) -> dict:
    url = f"{base}/v1/search?" + urllib.parse.urlencode({"q": query, "k": 10})
    res = get_json(url)
    names = [r["filename"] for r in res["results"]]
    if filename not in names[:top]:
        raise CheckFailed(f"search {query!r} ({res['mode']} mode): expected {filename} in the top {top}, got {names}")
    hit = res["results"][names.index(filename)]
    print(f"  search {query!r}: {filename} at rank {names.index(filename) + 1} "
          f"(score {hit['score']:.3f}, mode {res['mode']}, segment {hit['segment'] and hit['segment']['text']!r})")
    return hit


def cmd_ingest(base: str, manifest_path: str, state_path: str, key: str | None = None) -> None:
    manifest = json.loads(Path(manifest_path).read_text())
    ready = get_json(f"{base}/readyz")
    if not ready["ready"]:
        raise CheckFailed(f"readyz: not ready: {ready}")
    print(f"  readyz: mode {ready['mode']} ({ready['reason']}), worker {ready['worker']}, auth {ready['auth']}")
    clip = manifest["single"]
    accepted = upload(base, Path(clip["path"]), key)
    print(f"  upload: 202 {accepted}")
    job = wait_job(base, accepted["job_id"])
    video_id = job["items"][0]["video_id"]
    video = get_json(f"{base}/v1/videos/{video_id}")
    if video.get("ocr_status") != "read":  # the bundled OCR model must load and run inside the image
        raise CheckFailed(f"on-screen text: expected ocr_status 'read', got {video.get('ocr_status')!r} "
                          f"({video.get('ocr_error')})")
    print(f"  on-screen text: read ({len(video.get('screen_text') or [])} spans)")
    hit = find(base, clip["query"], clip["filename"])
    if hit["video_id"] != video_id:
        raise CheckFailed(f"search found video {hit['video_id']}, the upload made {video_id}")
    status, headers, thumb = request("GET", urllib.parse.urljoin(base + "/", hit["thumbnail_url"]))
    if status != 200 or not headers.get("content-type", "").startswith("image/") or len(thumb) < 100:
        raise CheckFailed(f"thumbnail: expected 200 image/*, got {status} {headers.get('content-type')} "
                          f"({len(thumb)} bytes)")
    print(f"  thumbnail: 200 {headers.get('content-type')}, {len(thumb)} bytes")
    original = Path(clip["path"]).read_bytes()
    first, last = 1000, 4999
    status, headers, part = request("GET", urllib.parse.urljoin(base + "/", hit["video_url"]),
                                    headers={"Range": f"bytes={first}-{last}"})
    if status != 206 or part != original[first:last + 1]:
        raise CheckFailed(f"range request: expected 206 with bytes {first}-{last} of the upload, got {status}, "
                          f"{len(part)} bytes, equal: {part == original[first:last + 1]}")
    print(f"  range: 206, {headers.get('content-range')}, bytes equal to the upload's")
    Path(state_path).write_text(json.dumps({"video_id": video_id}))


def cmd_again(base: str, state_path: str) -> None:
    video_id = json.loads(Path(state_path).read_text())["video_id"]
    video = get_json(f"{base}/v1/videos/{video_id}")
    print(f"  video {video_id} still there: {video['filename']}")
    ready = get_json(f"{base}/readyz")
    if ready["videos"] < 1:
        raise CheckFailed(f"readyz after restart: no videos: {ready}")
    status, _, _ = request("GET", f"{base}/v1/videos/{video_id}/thumbnail")
    if status != 200:
        raise CheckFailed(f"thumbnail after restart: {status}")
    hits = get_json(f"{base}/v1/search?" + urllib.parse.urlencode({"q": "ask not what your country can do"}))
    if not hits["results"] or hits["results"][0]["video_id"] != video_id:
        raise CheckFailed(f"search after restart: expected video {video_id} first, got {hits['results'][:1]}")
    print(f"  search after restart: video {video_id} first")


def cmd_bulk(base: str, manifest_path: str, key: str) -> None:
    manifest = json.loads(Path(manifest_path).read_text())
    body = json.dumps({"paths": ["/media"], "recursive": True}).encode()
    status, _, out = request("POST", f"{base}/v1/ingest-jobs", body,
                             {"Content-Type": "application/json", **auth(key)})
    if status != 202:
        raise CheckFailed(f"bulk job: expected 202, got {status}: {out[:300]!r}")
    job = json.loads(out)
    print(f"  bulk job {job['job_id']}: {job['total']} item(s)")
    if job["total"] != len(manifest["bulk"]):
        raise CheckFailed(f"bulk job: expected {len(manifest['bulk'])} items, got {job['total']}")
    wait_job(base, job["job_id"])
    for clip in manifest["bulk"]:
        find(base, clip["query"], clip["filename"])


def main(argv: list[str]) -> None:
    commands = {"wait": lambda url, t: print(f"{wait(url, float(t)):.1f}"), "ingest": cmd_ingest,
                "again": cmd_again, "bulk": cmd_bulk}
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(__doc__)
    try:
        commands[argv[1]](*argv[2:])
    except CheckFailed as e:
        print(f"CHECK FAILED: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv)
