from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_aver.errors import UserError
from ssl_aver.masking import aligned_markov_loss, default_levels, drop_frames, markov_loss, n_dropped, random_drop, stationary_loss_rate


def test_default_levels_follow_the_paper_grid():
    levels = default_levels()
    assert levels[:10] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert levels[10:] == [0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.91, 0.99, 1.0])
def test_random_drop_removes_exactly_the_requested_fraction_of_valid_frames(fraction):
    rng = np.random.default_rng(0)
    valid = np.ones(200, bool)
    valid[150:] = False  # padding / frames without a face stay untouched
    valid[10] = False
    drop = random_drop(valid, fraction, rng)
    assert drop.sum() == n_dropped(149, fraction)
    assert not drop[~valid].any()
    if fraction == 1.0:
        assert (drop == valid).all()


def test_random_drop_rejects_bad_fraction():
    with pytest.raises(UserError, match="fraction"):
        random_drop(np.ones(5, bool), 1.5, np.random.default_rng(0))


@pytest.mark.parametrize("p_loss,p_recover", [(0.1, 0.5), (0.3, 0.1), (0.05, 0.05)])
def test_markov_loss_matches_the_stationary_rate(p_loss, p_recover):
    lost = markov_loss(100_000, p_loss, p_recover, np.random.default_rng(1))
    assert not lost[0]  # the first frame is always received
    assert abs(lost.mean() - stationary_loss_rate(p_loss, p_recover)) < 0.02


def test_markov_loss_is_bursty_with_the_chain_transition_rates():
    lost = markov_loss(200_000, 0.1, 0.3, np.random.default_rng(2))
    received, missed = ~lost[:-1], lost[:-1]
    assert abs((lost[1:] & received).sum() / received.sum() - 0.1) < 0.01  # N -> L
    assert abs((~lost[1:] & missed).sum() / missed.sum() - 0.3) < 0.01  # L -> N


def test_markov_edge_cases():
    assert not markov_loss(50, 0.0, 0.5, np.random.default_rng(0)).any()
    never_back = markov_loss(1000, 0.2, 0.0, np.random.default_rng(0))
    first = int(np.argmax(never_back))
    assert first > 0 and never_back[first:].all()
    with pytest.raises(UserError, match="p_L"):
        markov_loss(10, 1.2, 0.1, np.random.default_rng(0))


def test_shared_mask_loses_the_same_time_regions_at_different_frame_rates():
    out = aligned_markov_loss({"audio": 250, "video": 150}, {"audio": 50.0, "video": 30.0}, 0.1, 0.2, np.random.default_rng(3))
    audio, video = out["audio"], out["video"]
    assert len(audio) == 250 and len(video) == 150 and not audio[0] and not video[0]
    # a video frame starting at time t has the state of the audio frame covering t
    for j in range(150):
        t = j / 30.0
        assert video[j] == audio[int(np.floor(t * 50.0 + 1e-9))]
    assert 0.0 < audio.mean() < 1.0


def test_drop_frames_clears_mask_and_zeroes_values():
    batch = {"audio": torch.ones(2, 4, 3, 5), "audio_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool),
             "has_audio": torch.tensor([True, True]), "video": None, "video_mask": None}
    drop = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    out = drop_frames(batch, "audio", drop)
    assert out["audio_mask"].tolist() == [[False, True, True, False], [False, False, False, False]]
    assert out["audio"][0, 0].abs().sum() == 0 and out["audio"][0, 1].abs().sum() > 0
    assert out["has_audio"].tolist() == [True, False]
    assert batch["audio_mask"][0, 0]  # the input batch is not modified
    assert drop_frames(batch, "video")["video"] is None
    assert not drop_frames(batch, "audio")["audio_mask"].any()
