"""The pretext window rule of paper 1 (section 3): 2 s windows with 0.5 s overlap (1.5 s hop).

Only full windows are kept, so every window carries the same amount of evidence; a clip
shorter than one window but at least `min_length` long gives a single window covering it
(CREMA-D-length clips would otherwise vanish).
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_S = 2.0
OVERLAP_S = 0.5
MIN_LENGTH_S = 0.5
_EPS = 1e-6


@dataclass(frozen=True)
class Window:
    index: int
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


def window_bounds(
    duration: float,
    length: float = WINDOW_S,
    overlap: float = OVERLAP_S,
    min_length: float = MIN_LENGTH_S,
) -> list[Window]:
    """Windows over a clip of `duration` seconds; empty when the clip is shorter than `min_length`."""
    if length <= 0 or not 0 <= overlap < length:
        raise ValueError(f"need length > 0 and 0 <= overlap < length, got {length=} {overlap=}")
    if duration + _EPS < min_length:
        return []
    if duration + _EPS < length:
        return [Window(0, 0.0, float(duration))]
    hop = length - overlap
    count = int((duration - length + _EPS) // hop) + 1
    return [Window(i, round(i * hop, 6), round(i * hop + length, 6)) for i in range(count)]
