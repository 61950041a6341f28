"""Settings of a pretext label build, split by phase.

`ClipSettings` change what the per-clip phase computes: a change gives a new settings key, so
stored per-clip results computed under other settings are never silently reused.
`FinalizeSettings` only change how stored raw statistics turn into labels, so changing them
never forces a recompute (`ssl-aver pretext finalize`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from ssl_aver.errors import UserError

#: paper 1 Fig. 1 splits the face into a top and a bottom region; the figure only shows them,
#: so the point sets are our reading of it (68-point iBUG/OpenFace layout): upper = brows 17-26,
#: nose bridge 27-30, eyes 36-47; lower = jaw 0-16, nose base 31-35, mouth 48-67.
UPPER_POINTS: tuple[int, ...] = tuple(range(17, 27)) + tuple(range(27, 31)) + tuple(range(36, 48))
LOWER_POINTS: tuple[int, ...] = tuple(range(0, 17)) + tuple(range(31, 36)) + tuple(range(48, 68))
#: points that move least with expression (nose 27-35, eye corners): rigid alignment is fitted on them.
RIGID_ANCHORS: tuple[int, ...] = tuple(range(27, 36)) + (36, 39, 42, 45)

LANDMARK_NORMS = ("none", "interocular", "rigid")
THRESHOLD_STATS = ("mean", "median")
AU_MATCH_RULES = ("any", "all")
RMS_AGGREGATES = ("rms", "mean")


@dataclass
class ClipSettings:
    """What the per-clip phase computes (see the module docstring)."""

    tasks: list[str] = field(default_factory=lambda: ["energy", "landmarks", "au"])
    face_backend: str = "openface"
    face_dir: str | None = None
    # windows (paper 1 section 3: 2 s segments, 0.5 s overlap)
    window_s: float = 2.0
    overlap_s: float = 0.5
    min_clip_s: float = 0.5
    # energy: librosa STFT magnitude -> librosa.feature.rms; librosa's defaults (the paper names
    # librosa and no parameters); aggregate "rms" = quadratic mean of the frame RMS values
    n_fft: int = 2048
    hop_length: int = 512
    rms_aggregate: str = "rms"
    # landmarks
    upper_points: list[int] = field(default_factory=lambda: list(UPPER_POINTS))
    lower_points: list[int] = field(default_factory=lambda: list(LOWER_POINTS))
    rigid_anchors: list[int] = field(default_factory=lambda: list(RIGID_ANCHORS))
    landmark_norm: str = "none"
    min_face_frames: int = 3
    # face frames: OpenFace success/confidence filter; AU presence per frame
    min_confidence: float = 0.8
    au_intensity_min: float = 1.0
    au_probability_min: float = 0.5
    # video decoding for detector backends (mediapipe, py-feat)
    every: int = 1
    max_side: int | None = 640
    pyfeat_detector: str = "Detectorv1"

    def validate(self) -> None:
        """Raise UserError naming the first bad value."""
        from pretext import TASKS
        from pretext.faces import BACKENDS

        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise UserError(f"unknown pretext task(s) {unknown or self.tasks}; choose from {', '.join(TASKS)}")
        if self.face_backend not in BACKENDS:
            raise UserError(f"unknown face backend '{self.face_backend}'; choose one of {', '.join(BACKENDS)}")
        if self.landmark_norm not in LANDMARK_NORMS:
            raise UserError(f"unknown landmark normalisation '{self.landmark_norm}'; choose one of {', '.join(LANDMARK_NORMS)}")
        if self.rms_aggregate not in RMS_AGGREGATES:
            raise UserError(f"unknown rms_aggregate '{self.rms_aggregate}'; choose one of {', '.join(RMS_AGGREGATES)}")
        if self.every < 1:
            raise UserError(f"--every must be >= 1, got {self.every}")
        if self.min_face_frames < 2:
            raise UserError(f"min_face_frames must be >= 2 (a variance needs two frames), got {self.min_face_frames}")
        for name in ("upper_points", "lower_points", "rigid_anchors"):
            points = getattr(self, name)
            if not points or any(not 0 <= int(p) < 68 for p in points):
                raise UserError(f"{name} must list landmark indices in 0..67, got {points}")
        if self.window_s <= 0 or not 0 <= self.overlap_s < self.window_s:
            raise UserError(f"need window_s > 0 and 0 <= overlap_s < window_s, got {self.window_s}, {self.overlap_s}")

    @property
    def needs_face(self) -> bool:
        return any(t in ("landmarks", "au") for t in self.tasks)

    def key(self) -> str:
        """Short hash of every setting that changes per-clip results (the name of their files)."""
        data = {k: v for k, v in asdict(self).items()}
        data["tasks"] = sorted(self.tasks)
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class FinalizeSettings:
    """How raw statistics become labels (no recompute needed to change these).

    threshold_stat: corpus threshold of each statistic; paper 1 uses the mean over all windows.
    au_presence: an AU is present in a window when its detection proportion is >= this.
    au_match: "any" = at least one present top AU and one present bottom AU of an emotion's
    Table 1 row (our reading of section 3.3); "all" = every AU of the row's top combination
    and its bottom AU present (the stricter reading of "matching the AU combinations").
    """

    threshold_stat: str = "mean"
    au_presence: float = 0.5
    au_match: str = "any"

    def validate(self) -> None:
        if self.threshold_stat not in THRESHOLD_STATS:
            raise UserError(f"unknown threshold statistic '{self.threshold_stat}'; choose mean or median")
        if self.au_match not in AU_MATCH_RULES:
            raise UserError(f"unknown au_match '{self.au_match}'; choose any or all")
        if not 0.0 < self.au_presence <= 1.0:
            raise UserError(f"au_presence must be in (0, 1], got {self.au_presence}")


def from_mapping(cls: type, data: Mapping[str, Any]) -> Any:
    """Build a settings dataclass from a mapping, ignoring keys that belong to the other phase."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
