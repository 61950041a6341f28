"""The feature benchmark reports positive throughputs for every extractor it measures."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ssl_aver.features.bench import benchmark_features  # noqa: E402


def test_benchmark_reports_face_fps_and_acoustic_real_time_factors(tmp_path):
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "conv_dim": (16,) * 7}
    result = benchmark_features(audio_seconds=1.0, batch_size=2, every=8, crop_size=64, archs=("mobilenet_v2",),
                                speech_shapes={"tiny": tiny}, work_dir=tmp_path)
    face = result["face"]
    assert face["frames"] == 9 and face["faces"] == 9
    assert face["landmarks_align_fps"] > 0 and face["mobilenet_v2_cnn_fps"] > 0 and face["mobilenet_v2_total_fps"] > 0
    assert result["smile"]["frame_shape"] == [130] and result["smile"]["rtf"] > 0
    assert result["tiny"]["frame_shape"] == [3, 32] and result["tiny"]["rtf"] > 0
