"""Several moments per video: the places in a long video that match a query, apart in time and not far below the
best (``SearchService.search(moments=N)``, ``GET /v1/search?moments=``). numpy is imported where it is used, so the
API's schemas (and the client, which reads them) can name these limits without loading it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


# Several moments per video (``SearchService.search(moments=N)``, ``GET /v1/search?moments=``).
MOMENTS_DEFAULT = 3
MOMENTS_MAX = 20
# Passages closer than this (overlapping, touching, a short pause between: the clause pieces of one sentence,
# consecutive sentences) are one place; the same 1.5 s within which evaluation counts a moment right.
MOMENT_GAP_S = 1.5
# A moment after the first scores at least MOMENT_MIN_SCORE (calibrated) and MOMENT_RATIO times the first's. Measured
# on the retrieval benchmark's collection laid out as one long video (every clip's passages on one timeline): with
# (0.02, 0.25) every extra moment listed that is not the query's clip is on the query's subject (19 of 66 queries;
# the printing-history clips), none comes from an unrelated clip; a second saying of the right passage placed far
# away is kept in 51 of the 57 queries whose first moment is right when it scores the same (the other 6 have a first
# moment under the minimum), in 46 when it scores 0.1 lower in raw score. Without a floor 64 of 66 queries list
# places in other clips; a ratio of 0.5 keeps only 20 of the repeats 0.1 lower.
MOMENT_MIN_SCORE = 0.02
MOMENT_RATIO = 0.25


@dataclass
class LocalPassages:
    """The candidates' local passages (those a moment is chosen from, ``Ranking.moment``), one row each, with the
    raw score of their channel: kept from scoring so that the page's moments cost no second pass."""

    passage_id: np.ndarray
    video_id: np.ndarray
    raw: np.ndarray
    screen: np.ndarray  # bool: the row scores the screen channel (else speech)
    start: np.ndarray
    end: np.ndarray
    length: np.ndarray  # last_idx - first_idx

    @classmethod
    def empty(cls) -> LocalPassages:
        import numpy as np

        f, i = np.zeros(0, np.float64), np.zeros(0, np.int64)
        return cls(i, i, f, np.zeros(0, bool), f, f, i)

    def of(self, video_ids: Sequence[int]) -> LocalPassages:
        """The rows of these videos only (the page's)."""
        import numpy as np

        m = np.isin(self.video_id, np.asarray(list(video_ids), dtype=np.int64))
        return LocalPassages(self.passage_id[m], self.video_id[m], self.raw[m], self.screen[m], self.start[m],
                             self.end[m], self.length[m])


def choose_moments(scores: np.ndarray, starts: np.ndarray, ends: np.ndarray, lengths: np.ndarray,
                   first: int | None, n: int, gap: float = MOMENT_GAP_S, min_score: float = MOMENT_MIN_SCORE,
                   ratio: float = MOMENT_RATIO) -> list[int]:
    """Indices of up to ``n`` moments among one video's local passages (calibrated ``scores``), ``first`` first
    (the result's ``segment``), then greedily the best passage that is at least ``gap`` seconds away from every one
    taken (earlier, then shorter, among equals), as long as it scores at least ``max(min_score, ratio * first's)``:
    a place that matches far worse than the best is not listed."""
    import numpy as np

    if first is None or n < 1:
        return []
    taken = [first]
    floor = max(min_score, ratio * float(scores[first]))
    for i in np.lexsort((lengths, starts, -scores)).tolist():
        if len(taken) >= n or scores[i] < floor:
            break
        if all(starts[i] >= ends[j] + gap or starts[j] >= ends[i] + gap for j in taken):
            taken.append(i)
    return taken
