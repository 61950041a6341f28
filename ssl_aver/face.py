"""Offline 68-point face landmarks (dlib / OpenFace / iBUG layout) from mediapipe FaceMesh.

mediapipe 0.10.21 bundles the legacy FaceMesh model (468 points, 478 with iris refinement),
which runs offline at hundreds of frames per second on one CPU core. The face pretext tasks
and the face crops of the fine-tuning heads are defined on the 68-point layout, so every
68-point landmark here is an affine combination (weights summing to one) of a few FaceMesh
points. The table lives in ``ssl_aver/data/face/mp468_to_dlib68.json`` and was fitted by
``scripts/fit_face_mapping.py`` against dlib's 68-point shape predictor on real frames,
in a face-normalised frame; weights summing to one make the mapping commute with any
translation, rotation and scale of the image, so pixel coordinates map directly.

`align_face` rotates a face so that its eye line is horizontal and crops a square around it
(papers 2-5 feed face crops to their visual branches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ssl_aver.data import DATA_DIR
from ssl_aver.errors import MediaError, UserError

MAPPING_PATH = DATA_DIR / "face" / "mp468_to_dlib68.json"
N_LANDMARKS = 68
#: outer eye corners of the 68-point layout: their distance is the inter-ocular distance (IOD)
OUTER_EYE_CORNERS = (36, 45)
LEFT_EYE = tuple(range(36, 42))
RIGHT_EYE = tuple(range(42, 48))
JAW = tuple(range(0, 17))


@dataclass(frozen=True)
class FaceMapping:
    """FaceMesh -> 68-point mapping: ``points68 = weights @ mesh[indices]``.

    `indices` are the K distinct FaceMesh points the table uses, `weights` is [68, K] with
    rows summing to one. Extracting only those K points from mediapipe's result keeps the
    per-frame cost of the mapping far below the cost of the network.
    """

    indices: np.ndarray
    weights: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path | None = None) -> "FaceMapping":
        """Read a mapping table written by scripts/fit_face_mapping.py."""
        p = Path(path) if path is not None else MAPPING_PATH
        if not p.is_file():
            raise UserError(f"face mapping table not found: {p}; regenerate it with `python scripts/fit_face_mapping.py`")
        data = json.loads(p.read_text())
        points = data.get("points")
        if not isinstance(points, list) or len(points) != N_LANDMARKS:
            raise UserError(f"face mapping table {p} must list {N_LANDMARKS} points; regenerate it with scripts/fit_face_mapping.py")
        indices = sorted({int(i) for terms in points for i, _ in terms})
        column = {mp: k for k, mp in enumerate(indices)}
        weights = np.zeros((N_LANDMARKS, len(indices)), dtype=np.float64)
        for row, terms in enumerate(points):
            for i, w in terms:
                weights[row, column[int(i)]] += float(w)
        if not np.allclose(weights.sum(axis=1), 1.0, atol=1e-6):
            raise UserError(f"face mapping table {p}: weights of every point must sum to 1")
        meta = {k: v for k, v in data.items() if k != "points"}
        return cls(np.asarray(indices, dtype=np.int64), weights.astype(np.float32), meta)

    def apply(self, mesh_points: np.ndarray) -> np.ndarray:
        """Map FaceMesh points [..., K, 2] (already restricted to `indices`) to [..., 68, 2]."""
        return np.einsum("jk,...kc->...jc", self.weights, mesh_points).astype(np.float32)


@dataclass(frozen=True)
class FaceTrack:
    """68-point landmarks of the largest face per decoded frame of a video.

    `landmarks` is [T, 68, 2] float32 in pixel coordinates of the original frames (also when
    frames were downscaled for detection), NaN where `present` is False.
    """

    times: np.ndarray
    landmarks: np.ndarray
    present: np.ndarray
    frame_indices: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.times.shape[0])


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    if not isinstance(image_rgb, np.ndarray) or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        shape = getattr(image_rgb, "shape", type(image_rgb).__name__)
        raise UserError(f"expected an RGB image of shape [height, width, 3], got {shape}")
    if image_rgb.dtype != np.uint8:
        raise UserError(f"expected a uint8 RGB image, got dtype {image_rgb.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    return np.ascontiguousarray(image_rgb)


class Landmarker68:
    """mediapipe FaceMesh + the fitted mapping to the 68-point layout.

    `static=False` runs FaceMesh in tracking mode (the face detector runs only when the
    track is lost): use it for consecutive video frames. `static=True` detects on every
    image: use it for unrelated images. Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        max_faces: int = 1,
        refine: bool = False,
        static: bool = False,
        min_confidence: float = 0.5,
        mapping: FaceMapping | str | Path | None = None,
    ) -> None:
        if max_faces < 1:
            raise UserError(f"max_faces must be >= 1, got {max_faces}")
        if not 0.0 <= min_confidence <= 1.0:
            raise UserError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self.mapping = mapping if isinstance(mapping, FaceMapping) else FaceMapping.load(mapping)
        self.max_faces = max_faces
        self.refine = refine
        self.static = static
        self.min_confidence = min_confidence
        self._index_list = [int(i) for i in self.mapping.indices]
        self._mesh = face_mesh(static, max_faces, refine, min_confidence)

    def __enter__(self) -> "Landmarker68":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the mediapipe graph (safe to call twice)."""
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def _process(self, image_rgb: np.ndarray) -> Any:
        if self._mesh is None:
            raise UserError("this Landmarker68 is closed; create a new one")
        return self._mesh.process(_check_image(image_rgb))

    def detect(self, image_rgb: np.ndarray) -> list[np.ndarray]:
        """68x2 float32 pixel landmarks of every detected face, largest face first."""
        result = self._process(image_rgb)
        if not result.multi_face_landmarks:
            return []
        h, w = image_rgb.shape[:2]
        scale = np.array([w, h], dtype=np.float32)
        faces = []
        for face in result.multi_face_landmarks:
            lm = face.landmark
            mesh = np.array([(lm[i].x, lm[i].y) for i in self._index_list], dtype=np.float32) * scale
            faces.append(self.mapping.apply(mesh))
        if len(faces) > 1:
            faces.sort(key=lambda p: -float(np.prod(p.max(axis=0) - p.min(axis=0))))
        return faces

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """68x2 float32 pixel landmarks of the largest face, or None when there is none."""
        faces = self.detect(image_rgb)
        return faces[0] if faces else None

    def track(self, path: str | Path, every: int = 1, max_side: int | None = None, progress: bool = False) -> FaceTrack:
        """Landmarks of the largest face on every `every`-th frame of a video.

        Frames larger than `max_side` are downscaled for detection; landmarks are returned in
        the original frame's pixels either way. The tracking state is reset first, so one
        Landmarker68 can track many videos. Raises MediaError when no frame decodes.
        """
        if self._mesh is None:
            raise UserError("this Landmarker68 is closed; create a new one")
        _restart(self._mesh)
        return _track_frames(self, _frames(path, every, max_side, progress))


#: what mediapipe's native code prints each time a FaceMesh graph starts (every worker, every
#: clip): absl's warning that the bundled TFLite models have no single signature for its feedback
#: manager, TFLite's XNNPACK notice, and absl's preamble to its first message
GRAPH_START_NOISE = (
    b"Feedback manager requires a model with a single signature inference",
    b"Created TensorFlow Lite XNNPACK delegate for CPU",
    b"All log messages before absl::InitializeLog() is called are written to STDERR",
)
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_graph_start() -> Iterator[None]:
    """Hold back file descriptor 2 while a graph starts, then pass on all but GRAPH_START_NOISE.

    mediapipe logs through C++ absl, which reads no environment variable (GLOG_minloglevel and
    TF_CPP_MIN_LOG_LEVEL change nothing, measured on 0.10.21) and has no Python switch, so the
    descriptor is the only place to drop those lines. Other output written meanwhile is delayed,
    not lost; the lock keeps two threads from swapping the descriptor under each other.
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(line for line in held.read().splitlines(keepends=True) if not any(n in line for n in GRAPH_START_NOISE))
            if kept:
                os.write(2, kept)


def face_mesh(static: bool, max_faces: int, refine: bool, min_confidence: float) -> Any:
    """A raw mediapipe FaceMesh (468/478 points), started without its start-up log lines."""
    import mediapipe as mp

    with _quiet_graph_start():
        mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static,
            max_num_faces=max_faces,
            refine_landmarks=refine,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        mesh._graph.wait_until_idle()  # the start-up lines come from graph threads: wait for them here
    return mesh


def _restart(mesh: Any) -> None:
    """FaceMesh.reset(): a new graph run, which prints the start-up lines again."""
    with _quiet_graph_start():
        mesh.reset()
        mesh._graph.wait_until_idle()


def _frames(path: str | Path, every: int, max_side: int | None, progress: bool) -> Iterator[tuple[int, float, np.ndarray, float, int, int]]:
    """(index, time, detection image, scale back to original pixels, width, height) per frame."""
    import cv2

    from ssl_aver.media import iter_frames

    if max_side is not None and max_side < 16:
        raise UserError(f"max_side must be >= 16 pixels, got {max_side}")
    frames = iter_frames(path, every=every)
    if progress:
        from ssl_aver.progress import tqdm

        frames = tqdm(frames, desc=f"landmarks {Path(path).name}", unit="frame")
    for frame in frames:
        h, w = frame.image.shape[:2]
        image, scale = frame.image, 1.0
        if max_side and max(h, w) > max_side:
            scale = max(h, w) / max_side
            image = cv2.resize(image, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA)
            scale = w / image.shape[1]
        yield frame.index, frame.time, image, scale, w, h


def _track_frames(landmarker: Landmarker68, frames: Iterator[tuple[int, float, np.ndarray, float, int, int]]) -> FaceTrack:
    """Run `landmarker` over the frames of `_frames` into a FaceTrack (original-pixel coordinates)."""
    times: list[float] = []
    indices: list[int] = []
    rows: list[np.ndarray] = []
    width = height = 0
    missing = np.full((N_LANDMARKS, 2), np.nan, dtype=np.float32)
    for index, t, image, scale, width, height in frames:
        points = landmarker(image)
        times.append(t)
        indices.append(index)
        rows.append(missing if points is None else points * np.float32(scale))
    if not rows:
        raise MediaError("no video frames decoded")
    landmarks = np.stack(rows).astype(np.float32)
    present = ~np.isnan(landmarks[:, 0, 0])
    return FaceTrack(np.asarray(times, dtype=np.float64), landmarks, present, np.asarray(indices, dtype=np.int64), width, height)


def inter_ocular_distance(landmarks68: np.ndarray) -> np.ndarray:
    """Distance between the outer eye corners (points 36 and 45), per face: the usual error scale."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    return np.linalg.norm(pts[..., OUTER_EYE_CORNERS[1], :] - pts[..., OUTER_EYE_CORNERS[0], :], axis=-1)


def eye_centres(landmarks68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the two eyes (means of points 36-41 and 42-47), image-left eye first."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    return pts[..., LEFT_EYE, :].mean(axis=-2), pts[..., RIGHT_EYE, :].mean(axis=-2)


def eye_line_angle(landmarks68: np.ndarray) -> float:
    """Angle of the eye line in degrees (0 = horizontal; positive = right eye lower in the image)."""
    left, right = eye_centres(landmarks68)
    d = right - left
    return math.degrees(math.atan2(d[1], d[0]))


def alignment_matrix(landmarks68: np.ndarray, size: int = 224, margin: float = 0.25) -> np.ndarray:
    """2x3 affine map from image pixels to the aligned crop of `align_face`.

    The face is rotated about the midpoint of the eye centres so that the eye line is
    horizontal; the crop is the square around the rotated landmarks' bounding box, its side
    the longer box side times (1 + 2 * margin), i.e. `margin` of the face size on each side
    (the papers crop faces without saying how; this is our choice). Apply it to landmarks
    with ``pts @ M[:, :2].T + M[:, 2]``.
    """
    pts = np.asarray(landmarks68, dtype=np.float64)
    if pts.shape != (N_LANDMARKS, 2) or not np.isfinite(pts).all():
        raise UserError(f"landmarks68 must be a finite [68, 2] array, got shape {pts.shape}")
    if size < 8:
        raise UserError(f"size must be >= 8 pixels, got {size}")
    if margin < 0:
        raise UserError(f"margin must be >= 0, got {margin}")
    left, right = eye_centres(pts)
    angle = math.atan2(right[1] - left[1], right[0] - left[0])
    c, s = math.cos(-angle), math.sin(-angle)
    rotation = np.array([[c, -s], [s, c]])
    pivot = (left + right) / 2.0
    rotated = (pts - pivot) @ rotation.T
    lo, hi = rotated.min(axis=0), rotated.max(axis=0)
    centre = (lo + hi) / 2.0
    side = float((hi - lo).max()) * (1.0 + 2.0 * margin)
    if side <= 0:
        raise UserError("landmarks68 collapse to a point; cannot align this face")
    k = size / side
    linear = k * rotation
    offset = -linear @ pivot - k * centre + size / 2.0
    return np.hstack([linear, offset[:, None]])


def align_face(image_rgb: np.ndarray, landmarks68: np.ndarray, size: int = 224, margin: float = 0.25) -> np.ndarray:
    """Rotate the face upright (eye line horizontal), crop a square with `margin`, resize to size x size.

    One affine warp (bilinear) does rotation, crop and resize together; area outside the image
    is black. Returns a [size, size, 3] uint8 RGB array.
    """
    import cv2

    image = _check_image(image_rgb)
    matrix = alignment_matrix(landmarks68, size=size, margin=margin)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def benchmark_landmarks(path: str | Path, every: int = 1, max_frames: int = 240, max_side: int | None = None) -> dict[str, Any]:
    """Frames per second of raw FaceMesh vs Landmarker68 (mapping included) on the same frames.

    Frames are decoded once into memory (at most `max_frames`), then each frame goes through
    a raw FaceMesh graph and a Landmarker68 graph, both in tracking mode, interleaved frame by
    frame so that load from other processes hits both alike. Only the calls are timed.
    """
    import cv2

    from ssl_aver.media import iter_frames

    images = []
    for frame in iter_frames(path, every=every):
        image = frame.image
        if max_side and max(image.shape[:2]) > max_side:
            f = max_side / max(image.shape[:2])
            image = cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)), interpolation=cv2.INTER_AREA)
        images.append(np.ascontiguousarray(image))
        if len(images) >= max_frames:
            break
    if not images:
        raise MediaError("no video frames decoded")
    raw = face_mesh(False, 1, False, 0.5)
    ours = Landmarker68()
    raw_s = ours_s = 0.0
    detected = 0
    try:
        raw.process(images[0])
        ours(images[0])
        for image in images:
            t0 = time.perf_counter()
            raw.process(image)
            t1 = time.perf_counter()
            points = ours(image)
            t2 = time.perf_counter()
            raw_s += t1 - t0
            ours_s += t2 - t1
            detected += points is not None
    finally:
        raw.close()
        ours.close()
    raw_fps = len(images) / raw_s
    ours_fps = len(images) / ours_s
    return {
        "path": str(path),
        "frames": len(images),
        "frame_size": [int(images[0].shape[1]), int(images[0].shape[0])],
        "detected_frames": int(detected),
        "raw_facemesh_fps": round(raw_fps, 1),
        "landmarker68_fps": round(ours_fps, 1),
        "ratio": round(ours_fps / raw_fps, 3),
    }


def save_track(track: FaceTrack, path: str | Path) -> Path:
    """Write a FaceTrack as .npz atomically (temp file in the same folder, then rename)."""
    import os
    import tempfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".npz", dir=target.parent)
    os.close(fd)
    try:
        np.savez_compressed(
            tmp, times=track.times, landmarks=track.landmarks, present=track.present,
            frame_indices=track.frame_indices, size=np.array([track.width, track.height]),
        )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_track(path: str | Path) -> FaceTrack:
    """Read a FaceTrack written by `save_track` (plain arrays, no pickle)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"landmark file not found: {p}; create it with `ssl-aver landmarks`")
    with np.load(p, allow_pickle=False) as z:
        width, height = (int(v) for v in z["size"])
        return FaceTrack(z["times"], z["landmarks"], z["present"], z["frame_indices"], width, height)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ssl-aver landmarks`."""
    parser.add_argument("inputs", nargs="+", help="video files and/or folders of videos (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder: one <clip>.npz per video + summary.json")
    parser.add_argument("--every", type=int, default=1, help="analyse every n-th frame (default 1)")
    parser.add_argument("--max-side", type=int, default=None, help="downscale larger frames for detection (landmarks stay in original pixels)")
    parser.add_argument("--refine", action="store_true", help="FaceMesh with iris refinement (478 points; slower)")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="FaceMesh detection/tracking confidence (default 0.5)")


def _clips(inputs: list[str]) -> tuple[list[tuple[str, Path]], list[dict[str, str]]]:
    from ssl_aver.corpora.folder import scan_folder
    from ssl_aver.media import VIDEO_EXTENSIONS

    clips: list[tuple[str, Path]] = []
    failures: list[dict[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            manifest = scan_folder(p)
            failures += manifest.failures
            prefix = "" if len(inputs) == 1 else f"{p.name}/"
            for clip in manifest.clips:
                if clip.has_video:
                    clips.append((prefix + clip.clip, Path(clip.path)))
                else:
                    failures.append({"clip": prefix + clip.clip, "reason": "no video stream"})
        elif p.is_file():
            if p.suffix.lower() not in VIDEO_EXTENSIONS:
                raise UserError(f"not a video file: {p}; give videos ({', '.join(sorted(VIDEO_EXTENSIONS))}) or folders")
            clips.append((p.stem, p))
        else:
            raise UserError(f"input not found: {p}; give existing video files or folders")
    ids = [c for c, _ in clips]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise UserError(f"several inputs share the clip id {dupes[0]!r}; rename them or pass one folder")
    return clips, failures


def run(args: argparse.Namespace) -> int:
    """`ssl-aver landmarks`: 68-point landmark tracks of videos; a bad clip is recorded, not fatal."""
    from ssl_aver.progress import tqdm

    from ssl_aver.io import write_json

    if args.every < 1:
        raise UserError(f"--every must be >= 1, got {args.every}")
    out = Path(args.out)
    clips, failures = _clips(args.inputs)
    rows = []
    with Landmarker68(refine=args.refine, min_confidence=args.min_confidence) as landmarker:
        for clip, path in tqdm(clips, desc="landmarks", unit="clip"):
            try:
                track = landmarker.track(path, every=args.every, max_side=args.max_side)
            except MediaError as err:
                failures.append({"clip": clip, "reason": str(err)})
                continue
            save_track(track, out / f"{clip}.npz")
            rows.append({"clip": clip, "frames": len(track), "present_fraction": round(float(track.present.mean()), 4)})
    summary = {
        "clips": rows,
        "failures": failures,
        "settings": {"every": args.every, "max_side": args.max_side, "refine": args.refine, "min_confidence": args.min_confidence},
        "mapping": {"path": str(MAPPING_PATH), "held_out": landmarker.mapping.meta.get("metrics", {}).get("held_out")},
    }
    write_json(out / "summary.json", summary)
    print(f"{len(rows)} clips tracked, {len(failures)} skipped -> {out}")
    for failure in failures:
        print(f"  skipped {failure['clip']}: {failure['reason']}")
    return 0
