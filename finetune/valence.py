"""Valence targets for joint emotion/valence decoding (paper 5): rated, or derived for CREMA-D.

Corpora with valence ratings (MER2023, MSP-Podcast-style) give them as a CSV `clip,valence`
named by `data.clip_columns`; its `valence` column is used as is, on the ratings' own scale
(`valence_source: clip_columns`; the MER head's `model.valence_scale` states that scale).
CREMA-D has no valence ratings, so a DERIVED target (`valence_source: derived_crema_d`) stands
in for them, on MER2023's valence scale [-5, 5] (`MER_SCALE`): a fixed valence per emotion
category, weighted by the clip's rating distribution and the intensity the raters gave each
emotion,

    valence = sum_k p_k * S_k * I_k / 100,

p_k the share of raters who chose emotion k, I_k their mean rated intensity (0-100) and S_k the
category valence of `VALENCE_BY_EMOTION` put on [-5, 5] (`category_valence`). The V_k of
`VALENCE_BY_EMOTION` are a stated choice on [-1, 1], not measurements: the order of the
categories on the valence axis of Russell's circumplex (1980), happiness clearly positive,
neutral at 0, the negative emotions between -0.6 and -0.7.

Scale. The shares sum to 1 and 0 <= I_k <= 100, so the value lies in [min(0, min_k S_k),
max(0, max_k S_k)], reached by a clip every rater gives the same extreme category at intensity
100. With the V_k themselves that range is [-0.7, 0.8] (about -0.65..0.73, variance 0.097, on the
real CREMA-D ratings), where MER2023's 0.25 x MSE is negligible next to the weighted F1. One
affine map of [-0.7, 0.8] onto [-5, 5] would move neutral off 0, and x5 reaches only
[-3.5, 4]; so each side is stretched on its own: S_k = 5 V_k / max_j V_j for V_k > 0 and
S_k = 5 V_k / |min_j V_j| for V_k < 0 (happiness +5, fear and sadness -5, anger and disgust
-4.29, neutral 0). The theoretical bounds are then exactly [-5, 5] with neutral at 0, and the
value stays linear in the ratings. The ratings of the audio-visual condition are used, falling
back to voice then face ratings for a clip that lacks them (`CONDITION_ORDER`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ssl_aver.crema_d_labels import EMOTIONS
from ssl_aver.errors import UserError

VALENCE_BY_EMOTION: dict[str, float] = {
    "anger": -0.6, "disgust": -0.6, "fear": -0.7, "happiness": 0.8, "neutral": 0.0, "sadness": -0.7,
}
#: MER2023's valence scale; the derived CREMA-D valence is put on it.
MER_SCALE: tuple[float, float] = (-5.0, 5.0)
CONDITION_ORDER: tuple[str, ...] = ("av", "voice", "face")
VALENCE_COLUMN = "valence"
SOURCE_COLUMN = "valence_source"


def category_valence(values: Mapping[str, float] = VALENCE_BY_EMOTION) -> dict[str, float]:
    """The category valences on MER_SCALE: each sign stretched so its extreme category is an end
    of the scale and 0 stays 0 (module docstring, "Scale")."""
    low, high = MER_SCALE
    most_negative = min(values.values())
    most_positive = max(values.values())
    return {
        emotion: (high * v / most_positive if v > 0 else low * v / most_negative if v < 0 else 0.0)
        for emotion, v in values.items()
    }


def derived_crema_d_valence(
    table: Any, values: Mapping[str, float] = VALENCE_BY_EMOTION, conditions: Sequence[str] = CONDITION_ORDER,
) -> np.ndarray:
    """Per clip: the rating-share- and intensity-weighted category valence on [-5, 5] (NaN without ratings).

    `table` is a label table of `ssl_aver.crema_d_labels.crema_d_labels` (its `{c}_<emotion>_p`
    and `{c}_<emotion>_intensity` columns); the first condition of `conditions` that has ratings
    for a clip gives its value.
    """
    missing = [c for c in (f"{conditions[0]}_{EMOTIONS[0]}_p", f"{conditions[0]}_{EMOTIONS[0]}_intensity") if c not in table.columns]
    if missing:
        raise UserError(f"cannot derive CREMA-D valence: the label table lacks {missing} (build it with ssl_aver.crema_d_labels)")
    scaled = category_valence(values)
    weights = np.array([scaled[e] for e in EMOTIONS], dtype=np.float64)
    out = np.full(len(table), np.nan)
    for condition in conditions:
        shares = table[[f"{condition}_{e}_p" for e in EMOTIONS]].to_numpy(np.float64)
        intensity = np.nan_to_num(table[[f"{condition}_{e}_intensity" for e in EMOTIONS]].to_numpy(np.float64), nan=0.0)
        value = (shares * intensity / 100.0 * weights).sum(axis=1)
        fill = np.isnan(out) & ~np.isnan(shares).any(axis=1)
        out[fill] = value[fill]
    return out


def valence_targets(table: Any) -> list[str]:
    """The `data.extra_targets: [valence]` entry: adds `valence` and `valence_source` columns.

    A `valence` column already in the table (joined from `data.clip_columns`) is the rated
    target, kept on its own scale; otherwise the CREMA-D valence is derived on [-5, 5] (see the
    module docstring). A clip without a finite valence is an error naming it, since a NaN target
    would poison the loss.
    """
    if VALENCE_COLUMN in table.columns:
        values = np.asarray(table[VALENCE_COLUMN].to_numpy(), dtype=np.float64) if table[VALENCE_COLUMN].dtype.kind in "fiu" else None
        if values is None:
            raise UserError("the valence column of data.clip_columns is not numeric")
        source = "clip_columns"
    else:
        values = derived_crema_d_valence(table)
        source = "derived_crema_d"
    bad = ~np.isfinite(values)
    if bad.any():
        raise UserError(f"{int(bad.sum())} clip(s) have no valence ({source}), e.g. {table['clip'].iloc[int(np.argmax(bad))]}; "
                        "give every clip a value in data.clip_columns or drop those clips")
    table[VALENCE_COLUMN] = values.astype(np.float32)
    table[SOURCE_COLUMN] = source
    return [VALENCE_COLUMN]
