"""Task 2 of paper 1 (section 3.2): is a window's facial activity high or low?

Per frame, the centroid of the upper-face points and of the lower-face points (Fig. 1; the
point sets are ClipSettings.upper_points / lower_points, our reading of the figure) and of all
68 points (the single-centroid variant of the SSL2 ablation, `face_whole`). Per window, the
variance of each centroid's trace: var(x) + var(y) over the window's usable frames (population
variance). A window with fewer than `min_face_frames` usable frames has no face labels.
Label: 1 when the variance is strictly above the corpus mean of that variance, else 0.

Normalisation (`landmark_norm`): "none" keeps raw image coordinates as the paper does (head
motion then dominates the variance); "interocular" divides each frame's coordinates by its
distance between the outer eye corners 36 and 45 (removes camera distance); "rigid" aligns each
frame to the clip's mean shape by a similarity transform fitted on the anchor points
(`rigid_anchors`: nose 27-35 and the eye corners, which expressions move least) before the
centroids, removing head motion. Anchoring on all 68 points instead would pin the whole-face
centroid in place, so face_whole would carry nothing.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from pretext.base import ClipData, binarize, corpus_threshold
from ssl_aver.windows import Window

STATS: tuple[str, ...] = ("var_upper", "var_lower", "var_whole")
LABELS: tuple[str, ...] = ("face_upper", "face_lower", "face_whole")
NEEDS_FACE = True
OUTER_EYE_CORNERS = (36, 45)
_REGION_LABEL = {"var_upper": "face_upper", "var_lower": "face_lower", "var_whole": "face_whole"}


def centroid_variance(landmarks: np.ndarray, points: Sequence[int]) -> float:
    """var(x) + var(y) of the trace of the centroid of `points` over frames [T, 68, 2]."""
    centroids = landmarks[:, list(points), :].mean(axis=1)
    return float(centroids.var(axis=0).sum())


def _similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale, rotation, translation mapping `source` points onto `target` (least squares, no reflection)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    s0, t0 = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(t0.T @ s0)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    fix = np.diag([1.0, d])
    rotation = u @ fix @ vt
    var_s = float((s0**2).sum())
    scale = float((sigma * np.diag(fix)).sum() / var_s) if var_s > 0 else 1.0
    return scale, rotation, mu_t - scale * rotation @ mu_s


def rigid_align(landmarks: np.ndarray, present: np.ndarray, anchors: Sequence[int], iterations: int = 3) -> np.ndarray:
    """Align every present frame to the clip's mean shape (generalised Procrustes on `anchors`)."""
    out = np.full_like(landmarks, np.nan)
    idx = np.flatnonzero(present)
    if idx.size == 0:
        return out
    anchors = list(anchors)
    out[idx] = landmarks[idx]
    reference = out[idx[0]]
    for _ in range(iterations):
        for i in idx:
            scale, rotation, shift = _similarity(landmarks[i, anchors], reference[anchors])
            out[i] = scale * landmarks[i] @ rotation.T + shift
        reference = out[idx].mean(axis=0)
    return out


def normalise(landmarks: np.ndarray, present: np.ndarray, mode: str, anchors: Sequence[int]) -> np.ndarray:
    """Landmarks under normalisation `mode` ("none", "interocular", "rigid"); see the module docstring."""
    if mode == "none":
        return landmarks
    if mode == "interocular":
        a, b = OUTER_EYE_CORNERS
        distance = np.linalg.norm(landmarks[:, a] - landmarks[:, b], axis=-1)
        distance = np.where(distance > 0, distance, np.nan)
        return landmarks / distance[:, None, None]
    if mode == "rigid":
        return rigid_align(landmarks, present, anchors)
    raise ValueError(f"unknown landmark normalisation {mode!r}")


def window_stats(clip: ClipData, windows: list[Window], settings: Any) -> list[dict[str, float | None]]:
    """Centroid-trace variances of every window of a clip (None where the face is missing)."""
    empty: dict[str, float | None] = {name: None for name in STATS}
    face = clip.face
    if face is None:
        return [dict(empty) for _ in windows]
    points = normalise(face.landmarks, face.present, settings.landmark_norm, settings.rigid_anchors)
    usable = face.present & np.isfinite(points).all(axis=(1, 2))
    regions = {"var_upper": settings.upper_points, "var_lower": settings.lower_points, "var_whole": list(range(68))}
    out = []
    for w in windows:
        mask = usable & face.in_window(w.start, w.end)
        if mask.sum() < settings.min_face_frames:
            out.append(dict(empty))
            continue
        out.append({name: centroid_variance(points[mask], pts) for name, pts in regions.items()})
    return out


def make_labels(table: pd.DataFrame, settings: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """face_upper / face_lower / face_whole: variance strictly above its corpus threshold."""
    labels, thresholds = {}, {}
    for stat, label in _REGION_LABEL.items():
        thresholds[stat] = corpus_threshold(table[stat], settings.threshold_stat)
        labels[label] = binarize(table[stat], thresholds[stat])
    return pd.DataFrame(labels), {"thresholds": thresholds}
