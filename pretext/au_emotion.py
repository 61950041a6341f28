"""Task 3 of paper 1 (section 3.3): a 5-class emotion pseudo-label from co-occurring action units.

Per window, the proportion of usable face frames in which each AU of Table 1 is detected (the
raw statistics au01..au26). An AU is present in the window when its proportion is >=
`au_presence` (default 0.5). EMFACS combinations (Table 1, top | bottom):
happiness AU6 | AU12; sadness AU1+AU4 | AU15; surprise AU1+AU2+AU5 | AU26; anger AU4+AU5+AU7 | AU23.

Matching (`au_match`): the paper labels a window that has "at least one AU present in the top
AU list and one AU present in the bottom AU list, while also matching the AU emotion
combinations". "any" (default) reads this as: at least one of the emotion's top AUs and one of
its bottom AUs present. "all" is the stricter reading: the emotion's whole top combination and
its bottom AU present.

Several matching emotions: the paper picks the combination "detected more times across the
entire sequence"; we sum, over the emotion's present AUs, the frames in which each was detected
(proportions share the window's frame count, so summed proportions rank identically). Ties of
that sum go to the emotion with more present AUs (the fuller combination), then to Table 1's
order (happiness, sadness, surprise, anger). No match: "other". A window without usable face
frames or without AU data has no label (missing), never "other".
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from pretext.base import ClipData
from ssl_aver.windows import Window

#: emotion -> (top AUs, bottom AUs), Table 1 of paper 1, in its row order
EMFACS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "happiness": ((6,), (12,)),
    "sadness": ((1, 4), (15,)),
    "surprise": ((1, 2, 5), (26,)),
    "anger": ((4, 5, 7), (23,)),
}
CLASSES: tuple[str, ...] = tuple(EMFACS) + ("other",)
EMFACS_AUS: tuple[int, ...] = tuple(sorted({au for top, bottom in EMFACS.values() for au in top + bottom}))
STATS: tuple[str, ...] = tuple(f"au{au:02d}" for au in EMFACS_AUS)
LABELS: tuple[str, ...] = ("au_emotion",)
NEEDS_FACE = True


def classify(proportions: Mapping[int, float | None], presence: float = 0.5, match: str = "any") -> str | None:
    """EMFACS label of one window from its AU detection proportions (None = no AU data)."""
    known = {au: float(p) for au, p in proportions.items() if p is not None and not np.isnan(p)}
    if not known:
        return None
    present = {au for au, p in known.items() if p >= presence}
    best: tuple[float, int, int] | None = None
    winner = "other"
    for order, (emotion, (top, bottom)) in enumerate(EMFACS.items()):
        top_hit = [au for au in top if au in present]
        bottom_hit = [au for au in bottom if au in present]
        if match == "all":
            matched = len(top_hit) == len(top) and len(bottom_hit) == len(bottom)
        else:
            matched = bool(top_hit) and bool(bottom_hit)
        if not matched:
            continue
        hits = top_hit + bottom_hit
        rank = (round(sum(known[au] for au in hits), 9), len(hits), -order)
        if best is None or rank > best:
            best, winner = rank, emotion
    return winner


def window_stats(clip: ClipData, windows: list[Window], settings: Any) -> list[dict[str, float | None]]:
    """Detection proportion of each Table 1 AU per window (None where unknown)."""
    empty: dict[str, float | None] = {name: None for name in STATS}
    face = clip.face
    if face is None or not face.aus:
        return [dict(empty) for _ in windows]
    out = []
    for w in windows:
        mask = face.in_window(w.start, w.end)
        row = dict(empty)
        if mask.sum() >= settings.min_face_frames:
            for au, name in zip(EMFACS_AUS, STATS):
                values = face.aus.get(au)
                if values is None:
                    continue
                seen = values[mask]
                seen = seen[~np.isnan(seen)]
                row[name] = float(seen.mean()) if seen.size else None
        out.append(row)
    return out


def make_labels(table: pd.DataFrame, settings: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """au_emotion for every window of the corpus (missing where no AU data)."""
    values = table[list(STATS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    labels = [classify(dict(zip(EMFACS_AUS, row)), settings.au_presence, settings.au_match) for row in values]
    column = pd.Series(pd.array(labels, dtype="string"), index=table.index)
    return pd.DataFrame({"au_emotion": column}), {"au_presence": settings.au_presence, "au_match": settings.au_match}
