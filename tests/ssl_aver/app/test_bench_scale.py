"""The paper-size VAVL step timer the bench uses to report what time subsampling buys."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_aver.app.bench_scale import vavl_step_seconds
from ssl_aver.errors import UserError


def test_vavl_step_seconds_times_a_paper_size_step_and_restores_threads():
    before = torch.get_num_threads()
    seconds = vavl_step_seconds(4, batch=2, audio_frames=16, video_frames=9, threads=1)
    assert math.isfinite(seconds) and seconds > 0 and torch.get_num_threads() == before
    with pytest.raises(UserError, match="model.subsample"):
        vavl_step_seconds(3, batch=2, audio_frames=16, video_frames=9)
    assert torch.get_num_threads() == before
