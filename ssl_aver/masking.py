"""Missing-frame simulators of paper 4 (Sec. V-A): random frame masking and Markov packet loss.

- Random masking (Fig. 3): in every clip exactly round(fraction x n) of its n valid frames are
  dropped, chosen uniformly without replacement (choice: the fraction counts the frames the
  model could see, so 100% always removes the modality and every level is exact per clip).
  `default_levels()` is the paper's grid: 0-90% in steps of 10, then 91-100% in steps of 1.
- Two-state Markov packet loss (Fig. 4): state N (received) -> L (lost) with probability p_L,
  L -> N with probability p_N; the first frame is always received. The stationary loss rate
  is p_L / (p_L + p_N). Sequences are drawn as alternating runs (received runs of
  Geometric(p_L) length, lost runs of Geometric(p_N) length), which is exactly the chain.
- Shared audio-visual loss: one chain runs on a common time grid (step = the finer of the
  two frame periods unless given) and every frame takes the state of the grid step that
  holds its start time i / fps, so audio and video lose the same time regions although their
  frame rates differ. Asynchronous loss draws an independent chain per modality on its own
  frames.
- `drop_frames` removes frames from a collated batch (ssl_aver.av_dataset.collate_av): it
  clears their mask bits and zeroes their values, so masked attention never sees them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from ssl_aver.errors import UserError


def default_levels() -> list[float]:
    """0.0, 0.1, ..., 0.9, 0.91, ..., 1.0 (paper 4, Fig. 3)."""
    return [round(i / 10, 2) for i in range(10)] + [round(0.9 + i / 100, 2) for i in range(1, 11)]


def n_dropped(n_valid: int, fraction: float) -> int:
    """How many of n frames a fraction drops: round half up of fraction x n."""
    return int(math.floor(fraction * n_valid + 0.5))


def random_drop(valid: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Drop mask of one clip (True = drop): exactly n_dropped(n_valid, fraction) of its valid frames."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"masking fraction must be in [0, 1], got {fraction}")
    valid = np.asarray(valid, dtype=bool)
    where = np.flatnonzero(valid)
    drop = np.zeros(valid.shape, dtype=bool)
    drop[rng.choice(where, size=n_dropped(len(where), fraction), replace=False)] = True
    return drop


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name} must be a probability in [0, 1], got {value}")


def stationary_loss_rate(p_loss: float, p_recover: float) -> float:
    """Long-run share of lost frames, p_L / (p_L + p_N) (0 when the chain never leaves N)."""
    _check_probability("p_L", p_loss)
    _check_probability("p_N", p_recover)
    return 0.0 if p_loss == 0 else p_loss / (p_loss + p_recover)


def markov_loss(length: int, p_loss: float, p_recover: float, rng: np.random.Generator) -> np.ndarray:
    """A loss sequence [length] (True = lost) of the two-state chain, first frame received."""
    _check_probability("p_L", p_loss)
    _check_probability("p_N", p_recover)
    lost = np.zeros(length, dtype=bool)
    at, state_lost = 0, False
    while at < length:
        p_leave = p_recover if state_lost else p_loss
        run = length - at if p_leave == 0 else int(rng.geometric(p_leave))
        lost[at : at + run] = state_lost
        at += run
        state_lost = not state_lost
    return lost


def aligned_markov_loss(
    frames: Mapping[str, int], fps: Mapping[str, float], p_loss: float, p_recover: float,
    rng: np.random.Generator, step: float | None = None,
) -> dict[str, np.ndarray]:
    """One chain shared by several modalities: {modality: loss [n frames]} aligned in time.

    frames: number of frames per modality; fps: their frame rates; step: seconds per chain step
    (default: the shortest frame period).
    """
    if any(float(fps[m]) <= 0 for m in frames):
        raise UserError(f"frame rates must be positive, got {dict(fps)}")
    step = float(step) if step else min(1.0 / float(fps[m]) for m in frames)
    starts = {m: np.arange(n) / float(fps[m]) for m, n in frames.items()}
    index = {m: np.floor(t / step + 1e-9).astype(int) for m, t in starts.items()}
    length = max([int(i.max()) + 1 for i in index.values() if len(i)] + [1])
    chain = markov_loss(length, p_loss, p_recover, rng)
    return {m: chain[i] for m, i in index.items()}


def drop_frames(batch: Mapping[str, Any], modality: str, drop: torch.Tensor | None = None) -> dict[str, Any]:
    """The batch with the frames in `drop` [B, T] (None: all frames) of `modality` removed.

    Their values become zero and their mask bits False; has_<modality> is recomputed. A batch
    without that modality (None) is returned unchanged.
    """
    out = dict(batch)
    values, mask = batch.get(modality), batch.get(f"{modality}_mask")
    if values is None or mask is None:
        return out
    keep = torch.zeros_like(mask) if drop is None else mask & ~drop.to(mask.device)
    out[f"{modality}_mask"] = keep
    out[modality] = values * keep.view(*keep.shape, *([1] * (values.dim() - 2))).to(values.dtype)
    out[f"has_{modality}"] = keep.any(dim=1)
    return out
