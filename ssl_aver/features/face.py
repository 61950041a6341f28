"""Per-frame face embeddings: landmarks -> aligned face crop -> CNN (global average pooled).

Papers 3 and 4 detect the face in every frame, rotate it so the eye line is horizontal, crop
and run a MobileNetV2 fine-tuned on AffectNet (1280-d after global pooling); paper 2 runs an
EfficientNet-B2 (1408-d) on 224 x 224 face crops. Here:

- landmarks: `landmarker: mediapipe` (offline, `ssl_aver.face.Landmarker68`; `tracking: true`
  runs a fresh FaceMesh tracker per clip, best for consecutive frames; `tracking: false` detects
  on every analysed frame with one detector, cheaper when only every k-th frame is analysed) or `landmarker: pyfeat` (py-feat's RetinaFace + MobileFaceNet 68 points; its weights
  come from the model hub, so offline without them it is a clear UserError);
- crops: `ssl_aver.face.align_face` (eye line horizontal, square crop with `margin`, resized
  to `crop_size`); the papers' 224 is the default, smaller crops are allowed for smoke runs;
- every frame that is analysed gets a row: a frame without a face has a zero vector and
  present=False, so time stays aligned and nothing is silently dropped;
- `every: k` analyses every k-th frame, or `fps: F` picks k = round(video fps / F); the
  store's fps is the video's fps / k;
- CNN: `arch: mobilenet_v2 | efficientnet_b2` (`backend: torchvision`, or `timm` for the
  EfficientNet-B2 state dicts of timm-based AffectNet models), ImageNet normalisation,
  `weights: PATH` (a state dict, .safetensors or .pt/.pth read with weights_only=True; the
  classifier's keys are ignored, every backbone key must be present), `weights: imagenet`
  (the library's ImageNet weights when cached or downloadable), or `weights: random` (tests
  and smoke runs only: the store's meta says weights=random).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ssl_aver.errors import MediaError, UserError
from ssl_aver.features import Extractor
from ssl_aver.features.store import ClipFeatures

ARCHS = {"mobilenet_v2": 1280, "efficientnet_b2": 1408}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.", "last_linear.")


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "SSL_AVER_OFFLINE"))


class FaceCNN:
    """A face CNN returning globally average-pooled features [N, dim] for uint8 crops [N, S, S, 3]."""

    def __init__(self, arch: str, weights: str, backend: str = "torchvision", device: str = "cpu", seed: int = 0) -> None:
        import torch

        if arch not in ARCHS:
            raise UserError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        if backend not in ("torchvision", "timm"):
            raise UserError(f"backend must be torchvision or timm, got {backend!r}")
        if backend == "timm" and arch != "efficientnet_b2":
            raise UserError("backend=timm is offered for arch=efficientnet_b2 only; use backend=torchvision for mobilenet_v2")
        self.arch, self.backend, self.device = arch, backend, device
        self.dim = ARCHS[arch]
        torch.manual_seed(int(seed))
        self.net = self._build(weights)
        self.net.eval().to(device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def _build(self, weights: str) -> Any:
        import torch

        if self.backend == "timm":
            import timm

            if weights == "imagenet":
                if _offline():
                    raise UserError(self._imagenet_hint("timm/efficientnet_b2 from the Hugging Face hub (offline mode is on)"))
                try:
                    return timm.create_model("efficientnet_b2", pretrained=True, num_classes=0)
                except Exception as err:  # hub and network errors come in many types
                    raise UserError(self._imagenet_hint(f"timm could not fetch them: {str(err).splitlines()[0][:100]}")) from None
            net = timm.create_model("efficientnet_b2", pretrained=False, num_classes=0)
            if weights != "random":
                self._load_file(net, weights)
            return net
        import torchvision

        builder = getattr(torchvision.models, self.arch)
        model = builder(weights=None)
        if weights == "imagenet":
            enum = torchvision.models.get_model_weights(self.arch).DEFAULT
            model.load_state_dict(self._imagenet_state(enum.url))
        elif weights != "random":
            self._load_file(model, weights)
        return torch.nn.Sequential(model.features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1))

    def _imagenet_hint(self, reason: str) -> str:
        return (
            f"ImageNet weights for {self.arch} are not available ({reason}); run once with network to cache them, "
            "or set weights=PATH to a local state dict (e.g. the AffectNet fine-tuned model), or weights=random for smoke runs only"
        )

    def _imagenet_state(self, url: str) -> dict[str, Any]:
        import torch

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not cached.is_file() and _offline():
            raise UserError(self._imagenet_hint(f"{cached} is missing and offline mode is on; download {url} there"))
        try:
            return torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
        except Exception as err:  # URLError, HTTPError, socket errors
            raise UserError(self._imagenet_hint(f"download of {url} to {cached} failed: {str(err).splitlines()[0][:100]}")) from None

    def _load_file(self, net: Any, path: str) -> None:
        import torch

        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(f"face CNN weights file not found: {file}; set weights to a state dict file, 'imagenet' or 'random'")
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(file))
            else:
                state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling refusals, corrupt files
            raise UserError(f"cannot read face CNN weights {file} ({str(err).splitlines()[0][:120]}); save a plain state dict (torch.save(model.state_dict())) or .safetensors") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UserError(f"{file} does not hold a state dict; save one with torch.save(model.state_dict(), path)")
        state = {self._strip(k): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
        result = net.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(_CLASSIFIER_PREFIXES)]
        if missing or result.unexpected_keys:
            raise UserError(
                f"{file} does not fit {self.backend} {self.arch}: {len(missing)} missing keys (e.g. {missing[:2]}), "
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]}); check arch/backend"
            )

    @staticmethod
    def _strip(key: str) -> str:
        for prefix in ("module.", "model.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        return key

    def __call__(self, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Embeddings [N, dim] float32 of uint8 RGB crops [N, S, S, 3]."""
        import torch

        out = np.zeros((len(crops), self.dim), np.float32)
        for start in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[start : start + batch_size])).to(self.device)
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
            with torch.inference_mode():
                out[start : start + len(x)] = self.net(x).float().cpu().numpy()
        return out


class PyFeatLandmarker:
    """py-feat's face detector + 68-point landmarks (largest-score face per frame)."""

    def __init__(self, device: str = "cpu") -> None:
        import torch

        try:
            # py-feat turns autograd off globally while building its detectors; keep the caller's mode.
            with torch.set_grad_enabled(torch.is_grad_enabled()):
                from feat import Detectorv1

                self.detector = Detectorv1(
                    face_model="retinaface", landmark_model="mobilefacenet", au_model=None, emotion_model=None,
                    identity_model=None, gaze_model=None, device=device,
                )
        except Exception as err:  # hub download errors come in many types
            raise UserError(
                f"py-feat's face detector weights are not available ({type(err).__name__}: {str(err).splitlines()[0][:100]}); "
                "run once with network (HF_HUB_OFFLINE unset) to download them, or use landmarker=mediapipe (offline)"
            ) from None
        self.columns = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray | None:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(image_rgb)).permute(2, 0, 1)[None]
        table = self.detector.detect(tensor, data_type="tensor", progress_bar=False)
        table = table.dropna(subset=self.columns)
        if len(table) == 0:
            return None
        row = table.sort_values("FaceScore", ascending=False).iloc[0]
        return np.stack([row[self.columns[:68]].to_numpy(float), row[self.columns[68:]].to_numpy(float)], axis=1).astype(np.float32)

    def close(self) -> None:
        """Nothing to release (kept for the same interface as Landmarker68)."""


class FaceCrops:
    """Decode a video, find 68 landmarks per analysed frame and cut aligned face crops.

    Returns (crops [n_found, S, S, 3] uint8, present [T] bool, fps of the analysed frames).
    """

    def __init__(self, landmarker: str = "mediapipe", every: int = 1, fps: float | None = None, crop_size: int = 224,
                 margin: float = 0.25, max_side: int | None = 640, min_confidence: float = 0.5, device: str = "cpu",
                 tracking: bool = True) -> None:
        if landmarker not in ("mediapipe", "pyfeat"):
            raise UserError(f"landmarker must be mediapipe or pyfeat, got {landmarker!r}")
        if int(every) < 1 or (fps is not None and float(fps) <= 0):
            raise UserError("every must be >= 1 and fps (when set) > 0")
        if int(crop_size) < 32:
            raise UserError(f"crop_size must be >= 32 pixels, got {crop_size}")
        self.kind, self.every, self.fps = landmarker, int(every), (float(fps) if fps is not None else None)
        self.crop_size, self.margin, self.max_side = int(crop_size), float(margin), (int(max_side) if max_side else None)
        self.min_confidence, self.tracking = float(min_confidence), bool(tracking)
        self._pyfeat = PyFeatLandmarker(device) if landmarker == "pyfeat" else None
        self._static: Any = None

    def _landmarker(self) -> Any:
        """py-feat's detector; or mediapipe: a fresh tracker per clip, or one detector on every frame."""
        if self._pyfeat is not None:
            return self._pyfeat
        from ssl_aver.face import Landmarker68

        if self.tracking:
            return Landmarker68(static=False, min_confidence=self.min_confidence)
        if self._static is None:
            self._static = Landmarker68(static=True, min_confidence=self.min_confidence)
        return self._static

    def step(self, video_fps: float | None) -> int:
        """Analyse every step-th frame: `every`, or the step closest to the target fps."""
        if self.fps is None or not video_fps:
            return self.every
        return max(1, round(video_fps / self.fps))

    def __call__(self, path: str) -> tuple[np.ndarray, np.ndarray, float]:
        import cv2

        from ssl_aver.face import align_face
        from ssl_aver.media import iter_frames

        capture = cv2.VideoCapture(str(path))
        video_fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) if capture.isOpened() else 0.0
        capture.release()
        step = self.step(video_fps)
        landmarker = self._landmarker()
        crops: list[np.ndarray] = []
        present: list[bool] = []
        times: list[float] = []
        try:
            for frame in iter_frames(path, every=step):
                image, scale = frame.image, 1.0
                if self.max_side and max(image.shape[:2]) > self.max_side:
                    scale = max(image.shape[:2]) / self.max_side
                    image = cv2.resize(image, (round(image.shape[1] / scale), round(image.shape[0] / scale)), interpolation=cv2.INTER_AREA)
                    scale = frame.image.shape[1] / image.shape[1]
                points = landmarker(image)
                times.append(frame.time)
                found = points is not None and bool(np.isfinite(points).all())
                present.append(found)
                if found:
                    crops.append(align_face(frame.image, points * np.float32(scale), size=self.crop_size, margin=self.margin))
        finally:
            if landmarker is not self._static:
                landmarker.close()
        if not present:
            raise MediaError("no video frames decoded")
        rate = (video_fps / step) if video_fps else (1.0 / float(np.median(np.diff(times))) if len(times) > 1 else 1.0)
        stack = np.stack(crops) if crops else np.zeros((0, self.crop_size, self.crop_size, 3), np.uint8)
        return stack, np.asarray(present, bool), float(rate)


class FaceExtractor(Extractor):
    """Face crops + CNN embeddings per analysed frame, with a `present` mask (one clip per step)."""

    name = "face"
    modality = "video"
    group_clips = False
    default_batch_size = 64

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "arch": "mobilenet_v2",
            "backend": "torchvision",
            "weights": "imagenet",
            "landmarker": "mediapipe",
            "every": 1,
            "fps": None,
            "crop_size": 224,
            "margin": 0.25,
            "max_side": 640,
            "min_confidence": 0.5,
            "tracking": True,
            "seed": 0,
        }

    def __init__(self, config: dict[str, Any], device: str = "cpu", batch_size: int = 64) -> None:
        super().__init__(config, device, batch_size)
        c = self.config
        self.weights = str(c["weights"])
        self.cnn = FaceCNN(str(c["arch"]), self.weights, str(c["backend"]), device, int(c["seed"]))
        self.crops = FaceCrops(str(c["landmarker"]), int(c["every"]), c["fps"], int(c["crop_size"]), float(c["margin"]),
                               c["max_side"], float(c["min_confidence"]), device, bool(c["tracking"]))

    def describe(self) -> dict[str, Any]:
        if self.weights in ("imagenet", "random"):
            fingerprint = f"{self.weights}:{self.config['arch']}:{self.config['backend']}" + (f":seed{self.config['seed']}" if self.weights == "random" else "")
            weights: Any = self.weights
        else:
            digest = hashlib.sha256(Path(self.weights).expanduser().read_bytes()).hexdigest()
            fingerprint, weights = "file:" + digest[:16], {"path": str(Path(self.weights).expanduser().resolve()), "sha256": digest}
        return {"frame_shape": [self.cnn.dim], "layers": None, "fps": None, "weights": weights, "fingerprint": fingerprint}

    def load(self, path: str) -> tuple[np.ndarray, np.ndarray, float]:
        return self.crops(path)

    def compute(self, items: list[tuple[np.ndarray, np.ndarray, float]]) -> list[ClipFeatures]:
        out = []
        for crops, present, fps in items:
            features = np.zeros((len(present), self.cnn.dim), np.float32)
            if len(crops):
                features[present] = self.cnn(crops, self.batch_size)
            out.append(ClipFeatures(features, fps, present))
        return out
