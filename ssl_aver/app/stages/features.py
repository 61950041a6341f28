"""Demo stage `features`: the acoustic and face feature stores of the demo CREMA-D corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssl_aver.app.demo import DemoContext
from ssl_aver.features.extract import extract_features
from ssl_aver.features.store import FeatureStore


def features_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `features`: acoustic stores (openSMILE LLDs, which the demo heads learn from, and
    a tiny RANDOM WavLM with all hidden states, exercising layer stacks) and a face store
    (MobileNetV2, RANDOM weights, every 8th frame, 112 px crops) of the demo CREMA-D corpus."""
    out = ctx.stage_dir("features")
    corpus = ctx.data / "crema-d"
    smile = extract_features(corpus, out / "audio_smile", "smile", threads=1)
    model = _tiny_random_wavlm(out / "models" / "wavlm-tiny-random", ctx.seed)
    audio = extract_features(corpus, out / "audio_wavlm_tiny_random", "speech", overrides=[f"model={model}"], batch_size=16, threads=1)
    video = extract_features(corpus, out / "video_mobilenet_v2_random", "face",
                             overrides=["weights=random", "every=8", "crop_size=112", "max_side=320", "tracking=false", f"seed={ctx.seed}"], batch_size=64, threads=1)
    faces = FeatureStore(video["store"])
    present = sum(int(faces.get(c)[2].sum()) for c in faces.clips)
    frames = int(faces.index["total_frames"])
    return {
        "audio_store": smile["store"],
        "ssl_store": audio["store"],
        "video_store": video["store"],
        "audio_clips": audio["clips_in_store"],
        "video_clips": video["clips_in_store"],
        "audio_frames": audio["frames_in_store"],
        "video_frames": frames,
        "face_found_fraction": round(present / frames, 4) if frames else 0.0,
        "failures": len(smile["failures"]) + len(audio["failures"]) + len(video["failures"]),
        "weights": "random (demo only)",
        "headline": f"{smile['clips_in_store']} clips of openSMILE LLDs, {audio['clips_in_store']} x {audio['frames_in_store']} frames (random tiny WavLM), "
                    f"{video['clips_in_store']} video clips, faces in {present}/{frames} frames (random MobileNetV2)",
    }


def _tiny_random_wavlm(folder: Path, seed: int) -> Path:
    """A WavLM-shaped model with RANDOM weights (2 layers, width 64) for the offline demo."""
    import torch
    from transformers import WavLMConfig, WavLMModel

    if (folder / "config.json").is_file():
        return folder
    config = WavLMConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, conv_dim=(32,) * 7,
                         feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(seed)
    WavLMModel(config).save_pretrained(folder)
    (folder / "README.md").write_text("RANDOM weights: a tiny WavLM-shaped model made by `ssl-aver demo` so the pipeline runs offline.\n"
                                      "Its features carry no information; use microsoft/wavlm-large for real runs.\n", encoding="utf-8")
    return folder
