"""Search quality on a user's own labelled queries: R@1, R@5, MRR and moment accuracy against the running
collection (``save-search evaluate-search QUERIES.tsv``), and the calibration fit that makes scores mean
"this share of results with this score were right".

Moment accuracy is on the first moment (``segment``); with several moments per result (``moments``), "any
moment" counts a query right when one of the right video's moments starts within the tolerance, and "stray" counts
the right video's other moments that lie away from the labelled answer (more than the tolerance outside it).

Queries file (TSV, UTF-8; ``#`` starts a comment line; a first line starting with ``query`` is a header)::

    query <TAB> expected <TAB> start <TAB> end <TAB> kind

``expected`` is the file name of the video the query was written for (or its video id); ``start``/``end``
(seconds, optional) say where the answer is; ``kind`` (optional) groups queries in the report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from indexer.enums import VideoStatus
from indexer.storage.db import Video

MOMENT_TOLERANCE_S = 1.5  # a moment is right when it starts within this of where the answer starts


@dataclass(frozen=True)
class LabelledQuery:
    query: str
    expected: str
    start: float | None = None
    end: float | None = None
    kind: str = ""


@dataclass
class QueryOutcome:
    query: str
    expected: str
    kind: str
    rank: int | None  # 1-based rank of the first right video among the results; None: not found
    moment_ok: bool | None  # None when the query has no labelled moment or the video was not found
    moment_start: float | None
    top: str | None  # file name of the first result
    # (raw speech, raw visual, raw screen, right) of every result, for the calibration fit
    scored: list[tuple[float | None, float | None, float | None, bool]] = field(default_factory=list)
    moment_any_ok: bool | None = None  # one of the right video's moments starts within the tolerance
    stray_moments: int | None = None  # the right video's moments after the first, away from the labelled answer


@dataclass
class Report:
    queries: int
    r1: float
    r5: float
    mrr: float
    moment_accuracy: float | None
    moments: int
    by_kind: dict[str, dict[str, float]]
    outcomes: list[QueryOutcome]
    any_moment_accuracy: float | None = None
    stray_moments: float | None = None  # per query with a labelled moment whose video was found

    def to_dict(self, with_outcomes: bool = True) -> dict:
        data = asdict(self)
        if not with_outcomes:
            data.pop("outcomes")
        else:
            for o in data["outcomes"]:
                o.pop("scored")
        return data


def read_queries(path: str | Path) -> list[LabelledQuery]:
    """Parse a queries file (see the module docstring); raises ValueError naming the bad line."""
    out: list[LabelledQuery] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = [c.strip() for c in line.split("\t")]
        if n == 1 and cols[0].lower() == "query":
            continue
        if len(cols) < 2 or not cols[0] or not cols[1]:
            raise ValueError(f"{path}:{n}: expected 'query<TAB>expected[<TAB>start<TAB>end[<TAB>kind]]'")
        try:
            start = float(cols[2]) if len(cols) > 2 and cols[2] else None
            end = float(cols[3]) if len(cols) > 3 and cols[3] else None
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: start/end must be seconds ({exc})") from exc
        out.append(LabelledQuery(cols[0], cols[1], start, end, cols[4] if len(cols) > 4 else ""))
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


def _targets(session, expected: Iterable[str]) -> dict[str, set[int]]:
    """expected label -> the ids of the videos it names (by file name, else by id)."""
    names: dict[str, set[int]] = defaultdict(set)
    for vid, filename in session.execute(select(Video.id, Video.filename).where(Video.status == VideoStatus.INDEXED)):
        names[filename].add(vid)
    out = {}
    for label in set(expected):
        ids = names.get(label, set())
        if not ids and label.isdigit():
            ids = {int(label)}
        out[label] = ids
    return out


def evaluate(search, queries: Sequence[LabelledQuery], k: int = 100,
             moment_tolerance: float = MOMENT_TOLERANCE_S) -> Report:
    """Run every query through ``search`` (a ``SearchService``) and score the ranking it returns."""
    with search.services.sessions() as s:
        targets = _targets(s, (q.expected for q in queries))
    missing = sorted(label for label, ids in targets.items() if not ids)
    if missing:
        raise ValueError(f"no indexed video is named {', '.join(missing[:5])}"
                         + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    outcomes = []
    k = min(k, search.max_k)
    for q in queries:
        page = search.search(q.query, k=k)
        right = targets[q.expected]
        rank = next((i for i, r in enumerate(page.results, 1) if r.video_id in right), None)
        moment_ok = moment_start = any_ok = stray = None
        if rank is not None:
            found = page.results[rank - 1]
            seg = found.segment
            moment_start = seg.start if seg is not None else None
            if q.start is not None:
                moment_ok = moment_start is not None and abs(moment_start - q.start) <= moment_tolerance
                any_ok = any(abs(m.start - q.start) <= moment_tolerance for m in found.moments)
                end = q.end if q.end is not None else q.start
                stray = sum(m.start > end + moment_tolerance or m.end < q.start - moment_tolerance
                            for m in found.moments[1:])
        outcomes.append(QueryOutcome(q.query, q.expected, q.kind, rank, moment_ok, moment_start,
                                     page.results[0].filename if page.results else None,
                                     [(r.raw_speech, r.raw_visual, r.raw_screen, r.video_id in right)
                                      for r in page.results], any_ok, stray))
    return summarize(outcomes)


def summarize(outcomes: list[QueryOutcome]) -> Report:
    def metrics(group: list[QueryOutcome]) -> dict[str, float]:
        ranks = [o.rank for o in group]
        return {"queries": len(group),
                "r1": sum(r == 1 for r in ranks) / len(group),
                "r5": sum(r is not None and r <= 5 for r in ranks) / len(group),
                "mrr": sum(1.0 / r for r in ranks if r is not None) / len(group)}

    overall = metrics(outcomes)
    moments = [o.moment_ok for o in outcomes if o.moment_ok is not None]
    any_moment = [o.moment_any_ok for o in outcomes if o.moment_any_ok is not None]
    stray = [o.stray_moments for o in outcomes if o.stray_moments is not None]
    kinds: dict[str, list[QueryOutcome]] = defaultdict(list)
    for o in outcomes:
        kinds[o.kind or "all"].append(o)
    return Report(len(outcomes), overall["r1"], overall["r5"], overall["mrr"],
                  sum(moments) / len(moments) if moments else None, len(moments),
                  {kind: metrics(group) for kind, group in sorted(kinds.items())}, outcomes,
                  sum(any_moment) / len(any_moment) if any_moment else None, sum(stray) / len(stray) if stray else None)


def fit_calibration(pairs: Sequence[tuple[float, bool]], l2: float = 1e-3, steps: int = 50) -> tuple[float, float]:
    """(a, b) of the logistic map ``p = sigmoid(a * raw + b)`` that best predicts "this result is the right
    video" from a channel's raw score (maximum likelihood, Newton's method, a little L2 on ``a``)."""
    if len(pairs) < 2 or len({bool(y) for _, y in pairs}) < 2:
        raise ValueError("calibration needs results that are right and results that are wrong")
    x = np.array([float(r) for r, _ in pairs])
    y = np.array([1.0 if t else 0.0 for _, t in pairs])
    X = np.stack([x, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    reg = np.diag([l2, 0.0])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + reg @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + reg + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


CHANNELS = ("speech", "visual", "screen")  # the order of a QueryOutcome.scored tuple's raw scores


def calibration_pairs(outcomes: Iterable[QueryOutcome], channel: str = "speech") -> list[tuple[float, bool]]:
    """(raw score of ``channel``, right) of every result the queries returned, for ``fit_calibration``."""
    i = CHANNELS.index(channel)
    pairs = []
    for o in outcomes:
        for *raw, right in o.scored:
            value = raw[i]
            if value is not None and math.isfinite(value):
                pairs.append((float(value), bool(right)))
    return pairs


def format_report(report: Report) -> str:
    lines = [f"queries {report.queries}  R@1 {report.r1:.3f}  R@5 {report.r5:.3f}  MRR {report.mrr:.3f}  "
             + (f"moments {report.moment_accuracy:.3f} ({report.moments})" if report.moment_accuracy is not None
                else "moments -")
             + (f"  any moment {report.any_moment_accuracy:.3f}  stray moments {report.stray_moments:.2f} per query"
                if report.any_moment_accuracy is not None and report.stray_moments is not None else "")]
    for kind, m in report.by_kind.items():
        lines.append(f"  {kind:<12} {int(m['queries']):>3} queries  R@1 {m['r1']:.3f}  R@5 {m['r5']:.3f}  "
                     f"MRR {m['mrr']:.3f}")
    misses = [o for o in report.outcomes if o.rank != 1]
    if misses:
        lines.append("not first:")
        lines += [f"  [{o.rank or '-'}] {o.query!r} -> wanted {o.expected}, got {o.top}" for o in misses]
    return "\n".join(lines)
