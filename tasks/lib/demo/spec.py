"""What one demo clip is (its labels, ids, window and seed) and the class names: shared by planning, motion and
rendering."""
from __future__ import annotations

from dataclasses import dataclass




DRIBBLING = "dribbling basketball"
DUNKING = "dunking basketball"
CLASSES: tuple[str, ...] = (DRIBBLING, DUNKING)
#: Optional classes for K>2 tests (``extra_classes=1`` adds the first, ...). Also motion-defined.
EXTRA_CLASSES: tuple[str, ...] = ("shooting basketball", "passing basketball")
FORMAT_VERSION = 2  # bump when the pictures change: a folder of an older version is regenerated
MANIFEST = ".demo-data.json"
CSV_NAME = "annotations.csv"
CSV_COLUMNS = ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
GRAVITY = 5.0  # player heights per s^2 (a 1.9 m player: 9.5 m/s^2)


@dataclass(frozen=True)
class ClipSpec:
    label: str
    youtube_id: str
    split: str  # train / validate / test, as in K600/K700 CSVs
    is_cc: int
    time_start: int
    time_end: int
    n_frames: int  # frames in the source video
    fps: int
    width: int
    height: int
    seed: tuple[int, ...]  # SeedSequence entropy for this clip's pixels and motion
