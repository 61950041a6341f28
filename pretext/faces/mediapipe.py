"""Offline landmarks from mediapipe FaceMesh mapped to the 68-point layout (ssl_aver.face).

No action units: the AU task is reported as unavailable with this backend, never guessed.
`every` analyses every k-th frame (the variance then uses fewer frames per window).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pretext.faces import FaceSeries
from ssl_aver.errors import MediaError


class MediaPipeBackend:
    """Tracks each clip's video with one Landmarker68 kept for the process."""

    GIVES_AUS = False

    def __init__(self, settings: Any) -> None:
        self.every = int(settings.every)
        self.max_side = settings.max_side

    def load(self, clip: Any) -> FaceSeries:
        if not clip.has_video:
            raise MediaError("audio-only file: the mediapipe backend needs video frames")
        from ssl_aver.face import Landmarker68

        # a fresh tracker per clip: FaceMesh tracking state must not carry over between videos
        with Landmarker68(max_faces=1, static=False) as landmarker:
            track = landmarker.track(clip.path, every=self.every, max_side=self.max_side)
        return FaceSeries(np.asarray(track.times), np.asarray(track.landmarks), np.asarray(track.present), None)

    def close(self) -> None:
        """Nothing held between clips."""
