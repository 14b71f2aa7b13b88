"""Real speech clips for docker/ci-smoke.sh: mp4 files (H.264 + AAC) made from the shared speech recordings
with the same helper the tests use (tests/media_fixtures.py), and the words to search each one by.

    python docker/ci/make_clips.py OUT_DIR MEDIA_DIR   # prints a JSON manifest, also written to OUT_DIR

OUT_DIR/single/jfk.mp4 is the upload clip; OUT_DIR/bulk/*.mp4 the folder of the bulk job.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.media_fixtures import speech_video  # noqa: E402

# (source under MEDIA_DIR/speech, clip name, a query made of words spoken in it)
SINGLE = ("jfk.flac", "jfk.mp4", "ask not what your country can do for you")
BULK = [
    ("ljspeech/LJ001-0001.wav", "printing.mp4", "printing differs from most of the arts and crafts"),
    ("ljspeech/LJ001-0003.wav", "woodblocks.mp4", "chinese impressions from wood blocks engraved in relief"),
    ("ljspeech/LJ001-0005.wav", "movable-letters.mp4", "invention of movable metal letters fifteenth century"),
    ("ljspeech/LJ001-0007.wav", "gutenberg.mp4", "earliest book printed with movable types forty-two line bible"),
]


def main(out: Path, media: Path) -> None:
    speech = media / "speech"
    manifest: dict = {"single": None, "bulk": []}
    (out / "single").mkdir(parents=True, exist_ok=True)
    (out / "bulk").mkdir(parents=True, exist_ok=True)
    src, name, query = SINGLE
    manifest["single"] = {"path": str(speech_video(speech / src, out / "single" / name)), "filename": name,
                          "query": query}
    for i, (src, name, query) in enumerate(BULK):
        path = speech_video(speech / src, out / "bulk" / name, color=(40 + 50 * i, 90, 160))
        manifest["bulk"].append({"path": str(path), "filename": name, "query": query})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
