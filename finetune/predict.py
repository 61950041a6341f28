"""Inference with any fine-tuned head: `finetune.load(RUN)` and `ssl-aver predict --run RUN INPUT...`.

A fine-tuning run directory is self-contained: inference.json names the head, task, classes and,
per modality, the extractor with its full resolved config; config.yaml holds the head's `model:`
config; split_XX/model.safetensors holds every weight of the head, including a fine-tuned
pretrained encoder and every normalisation buffer. The head is rebuilt from those alone: where
its builder loads the pretrained encoder from `encoder: DIR`, it is handed a stand-in folder made
from the encoder config stored in inference.json (weights then come from the run), so the
original folder may be gone. Runs written before inference.json stored that config need the
original folder, whose weights must still match the recorded sha256.

Features are recomputed per clip, in memory, with exactly the training-time extractor configs
(same extractor class, same config, the store's dtype rounding, and the weights' fingerprint
checked), so a test clip gets the probabilities the fine-tuning run wrote for it.

Modalities: "auto" uses every modality the head reads that the file has (a video whose audio
track was removed runs video-only on an audio-visual head; an audio file audio-only); a video
without any detected face counts as having no video, as in training. "audio", "video" or "av"
force a test condition the head was evaluated in (`eval_modalities`); a clip lacking what is
forced gets an error row. One clip that cannot be used never stops the others: its row carries
the reason in `error`.

Window level (long recordings): paper 1's 2 s windows with 1.5 s hop (`ssl_aver.windows`). The
audio of each window is cut from the clip's 16 kHz signal and goes through the extractor on its
own (so a transformer extractor sees only that window). Choice: face features are per frame
(crop + CNN, no temporal context), so the clip's face frames are computed once and each window
takes the frames whose time falls inside it.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ssl_aver.errors import MediaError, UserError
from ssl_aver.io import sha256_file

MODES = ("auto", "audio", "video", "av")
RESERVED_COLUMNS = ("clip", "path", "window", "start", "end", "top", "labels", "modalities", "error")


@dataclass
class _Unit:
    """One prediction to make: a whole clip or one of its windows."""

    clip: str
    path: str
    window: int | None = None
    start: float | None = None
    end: float | None = None
    condition: str = ""
    audio: np.ndarray | None = None
    video: np.ndarray | None = None
    present: np.ndarray | None = None
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)


def _condition(modalities: Iterable[str]) -> str:
    used = set(modalities)
    return "av" if used == {"audio", "video"} else next(iter(used), "")


def _stand_in_encoder(config: dict[str, Any], folder: Path) -> Path:
    """A folder holding the encoder's config.json and weights of the right shapes (random values).

    The head's builder loads it like the pretrained folder; every value is then replaced by the
    run's own fine-tuned weights.
    """
    if config.get("model_type") == "wav2vec2":
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        Wav2Vec2Model(Wav2Vec2Config.from_dict(config)).save_pretrained(str(folder), safe_serialization=True)
        return folder
    from ssl_aver.models.encoder import EncoderConfig, SSLEncoder

    return SSLEncoder(EncoderConfig.from_dict(config)).save_pretrained(folder)


def _original_encoder(record: dict[str, Any]) -> Path:
    """The pretrained encoder folder of a run that did not store its config; checked by sha256."""
    info = record["encoder"]
    folder = Path(info["path"])
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"this run was fine-tuned from {folder}, which is gone, and its inference.json predates stored encoder configs; "
                        "restore that folder or re-run the fine-tuning")
    if info.get("sha256") and sha256_file(weights) != info["sha256"]:
        raise UserError(f"{weights} changed since the run was fine-tuned (sha256 differs from inference.json); restore the original encoder")
    return folder


class Predictor:
    """A fine-tuned head of one split plus the extractors that rebuild its inputs from media files."""

    def __init__(self, run_dir: str | Path, split: int = 0, device: str = "auto", batch_size: int = 16, check_features: bool = True) -> None:
        import torch
        from omegaconf import OmegaConf

        from finetune.heads import head_class
        from ssl_aver.features.extract import resolve_device
        from ssl_aver.io import read_json

        self.run_dir = Path(run_dir)
        if not (self.run_dir / "inference.json").is_file() or not (self.run_dir / "config.yaml").is_file():
            raise UserError(f"{self.run_dir} is not a fine-tuning run (no inference.json / config.yaml); point --run at an `ssl-aver finetune` output_dir")
        self.record: dict[str, Any] = read_json(self.run_dir / "inference.json")
        self.cfg = OmegaConf.load(self.run_dir / "config.yaml")
        self.split = int(split)
        self.weights = self.run_dir / f"split_{self.split:02d}" / "model.safetensors"
        if not self.weights.is_file():
            found = sorted(p.parent.name for p in self.run_dir.glob("split_*/model.safetensors"))
            raise UserError(f"no weights for split {self.split} ({self.weights}); this run has: {', '.join(found) or 'none'}")
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.check_features = check_features
        self.head_name = str(self.record["head"])
        self.head_cls = head_class(self.head_name)
        self.classes: list[str] = list(self.record["classes"])
        self.task = str(self.record["task"])
        self.waveform = self.record["inputs"] == "waveform"
        self.inputs: tuple[str, ...] = ("audio",) if self.waveform else tuple(m for m in ("audio", "video") if m in self.record["inputs"])
        self.eval_modalities: tuple[str, ...] = tuple(self.head_cls.eval_modalities)
        self.device = torch.device(resolve_device(device))
        self.model = self._build().eval().to(self.device)
        self._extractors: dict[str, Any] = {}

    # ---- rebuilding the head -----------------------------------------------------------------
    def _context(self, encoder_dir: str | None) -> Any:
        from finetune.heads import BuildContext

        n = len(self.classes)
        context = self.record.get("context")
        if context is None:
            shapes = {m: spec["frame_shape"] for m, spec in self.record["features"].items()}
            if list(self.cfg.data.get("extra_targets") or []):
                raise UserError(f"{self.run_dir / 'inference.json'} predates stored target layouts and the run has extra targets; re-run the fine-tuning")
            audio = shapes.get("audio")
            context = {"audio_shape": audio, "video_shape": shapes.get("video"), "target_layout": {"primary": [0, n]},
                       "audio_stats": bool(not self.waveform and not self.record.get("encoder") and audio is not None and len(audio) == 1)}
        audio_shape = tuple(context["audio_shape"]) if context.get("audio_shape") else None
        stats = None
        if context.get("audio_stats") and audio_shape:
            stats = (np.zeros(audio_shape, np.float32), np.ones(audio_shape, np.float32))  # stand-ins: the run's saved buffers overwrite them
        return BuildContext(
            n_classes=n, task=self.task, encoder_dir=encoder_dir, audio_shape=audio_shape,
            video_shape=tuple(context["video_shape"]) if context.get("video_shape") else None, audio_stats=stats,
            class_counts=np.ones(n, np.int64), extra={"target_layout": {k: slice(a, b) for k, (a, b) in context["target_layout"].items()}},
        )

    def _build(self) -> Any:
        from ssl_aver.models.encoder import load_safetensors

        encoder = self.record.get("encoder")
        with tempfile.TemporaryDirectory(prefix="ssl-aver-encoder-") as tmp:
            encoder_dir = None
            if encoder:
                encoder_dir = str(_stand_in_encoder(encoder["config"], Path(tmp)) if encoder.get("config") else _original_encoder(self.record))
            model = self.head_cls.from_config(self.cfg.model, len(self.classes), self._context(encoder_dir))
        state = load_safetensors(self.weights, "fine-tuned head")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"{self.weights} does not fit the '{self.head_name}' head built from {self.run_dir / 'config.yaml'}: {str(err).splitlines()[0][:200]}") from None
        return model

    # ---- features ----------------------------------------------------------------------------
    def _extractor(self, modality: str) -> tuple[Any, str]:
        """The training-time extractor of `modality` (built once) and the store dtype it wrote."""
        if modality not in self._extractors:
            from ssl_aver.features import extractor_class
            from ssl_aver.features.extract import COMMON_DEFAULTS

            spec = self.record["features"][modality]
            cls = extractor_class(str(spec["extractor"]))
            config = dict(spec["config"])
            own = {k: v for k, v in config.items() if k not in COMMON_DEFAULTS}
            device = "cpu" if self.device.type == "cpu" else str(self.device)
            extractor = cls(own, device=device, batch_size=cls.default_batch_size)
            if self.check_features:
                found = extractor.describe()["fingerprint"]
                if found != spec.get("fingerprint"):
                    raise UserError(
                        f"the {modality} extractor's weights differ from the run's ({found} != {spec.get('fingerprint')}): "
                        f"{spec['extractor']} config {own}; restore them, or pass --no-feature-check if they are the same weights moved"
                    )
            self._extractors[modality] = (extractor, str(config.get("store_dtype", "float32")))
        return self._extractors[modality]

    def _features(self, modality: str, path: str) -> tuple[np.ndarray, float, np.ndarray | None]:
        """(frames [T, ...] float32 rounded like the store, fps, face mask or None) of one file."""
        extractor, dtype = self._extractor(modality)
        result = extractor.compute([extractor.load(path)])[0]
        array = np.asarray(result.array).astype(dtype).astype(np.float32)
        return array, float(result.fps), (None if result.present is None else np.asarray(result.present, bool))

    def _audio_input(self, path: str) -> np.ndarray:
        """Acoustic input of a file (or of a 16 kHz float WAV cut from one): waveform or extractor frames."""
        if self.waveform:
            from ssl_aver.media import load_audio

            audio = load_audio(path)
            return ((audio - audio.mean()) / (audio.std() + 1e-7)).astype(np.float32)
        return self._features("audio", path)[0]

    # ---- planning what to run ------------------------------------------------------------------
    def _wanted(self, mode: str) -> tuple[str, ...]:
        """Modalities to use under a forced mode (checked against the head), or the head's inputs for auto."""
        if mode not in MODES:
            raise UserError(f"modalities must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "auto":
            return self.inputs
        wanted = ("audio", "video") if mode == "av" else (mode,)
        if any(m not in self.inputs for m in wanted):
            raise UserError(f"head '{self.head_name}' reads {' and '.join(self.inputs)} only; it cannot predict from {mode} "
                            f"(use --modalities auto{''.join(' or ' + m for m in self.eval_modalities)})")
        if mode not in self.eval_modalities:
            raise UserError(f"head '{self.head_name}' was evaluated in conditions {list(self.eval_modalities)}, not {mode}; choose one of those or auto")
        return wanted

    def _units(self, clip: str, path: str, mode: str, window_level: bool, tmp: Path) -> list[_Unit]:
        """Inputs of one file (one unit, or one per window), or one unit carrying its error."""
        from ssl_aver.media import SAMPLE_RATE, load_audio, probe

        try:
            info = probe(path)
            streams = {"audio": info.has_audio, "video": info.has_video}
            wanted = self._wanted(mode)
            missing = [m for m in wanted if not streams[m]]
            if mode != "auto" and missing:
                raise MediaError(f"no {missing[0]} stream, but --modalities {mode} was asked for")
            used = [m for m in wanted if streams[m]]
            if not used:
                raise MediaError(f"no {' or '.join(wanted)} stream; head '{self.head_name}' reads {' and '.join(self.inputs)}")
            video = self._features("video", path) if "video" in used else None
            if video is not None and not video[2].any():
                if mode in ("video", "av") or used == ["video"]:
                    raise MediaError("no face found in any analysed frame")
                video, used = None, ["audio"]
            condition = _condition(used)
            if mode == "auto" and condition not in self.eval_modalities:
                raise MediaError(f"head '{self.head_name}' cannot predict from {condition} alone (it was evaluated in {list(self.eval_modalities)})")
            if not window_level:
                audio = self._audio_input(path) if "audio" in used else None
                return [_Unit(clip, path, condition=condition, audio=audio, video=None if video is None else video[0], present=None if video is None else video[2])]
            signal = load_audio(path, SAMPLE_RATE) if "audio" in used else None
            duration = len(signal) / SAMPLE_RATE if signal is not None else len(video[0]) / video[1]
            windows = _window_bounds(duration)
            if not windows:
                raise MediaError(f"too short for a window: {duration:.2f} s < 0.5 s")
        except Exception as err:  # noqa: BLE001 (see _reason: one odd file must not stop the others)
            return [_Unit(clip, path, error=_reason(err))]
        units = []
        for window in windows:
            unit = _Unit(clip, path, window.index, window.start, window.end, condition)
            try:
                if signal is not None:
                    piece = signal[int(round(window.start * SAMPLE_RATE)) : int(round(window.end * SAMPLE_RATE))]
                    cut = tmp / "window.wav"
                    _write_wav(cut, piece)
                    unit.audio = self._audio_input(str(cut))
                if video is not None:
                    times = np.arange(len(video[0])) / video[1]
                    inside = (times >= window.start - 1e-6) & (times < window.end - 1e-6)
                    unit.video, unit.present = video[0][inside], video[2][inside]
                    if not unit.present.any():
                        if signal is None or mode in ("video", "av"):
                            raise MediaError("no face found in this window")
                        unit.video = unit.present = None
                        unit.condition = "audio"
            except Exception as err:  # noqa: BLE001 (see _reason)
                unit.error, unit.audio, unit.video, unit.present = _reason(err), None, None, None
            units.append(unit)
        return units

    # ---- running the head ------------------------------------------------------------------------
    def _forward(self, units: list[_Unit]) -> None:
        """Run one batch of ready units through the head; fills each unit's outputs."""
        import torch

        from finetune.trainer import activate, move

        names = [f"{u.clip}#{i}" for i, u in enumerate(units)]
        if self.waveform:
            from finetune.data import WaveformDataset

            batch = WaveformDataset.collate([(n, u.audio, np.zeros(0, np.float32)) for n, u in zip(names, units)])
        else:
            from ssl_aver.av_dataset import AVItem, collate_av

            context = self.record.get("context") or {}
            shapes = {m: tuple(context.get(f"{m}_shape") or self.record["features"][m]["frame_shape"]) if m in self.inputs else None for m in ("audio", "video")}
            items = [
                AVItem(n, None if u.audio is None else torch.from_numpy(u.audio), None if u.video is None else torch.from_numpy(u.video),
                       None if u.present is None else torch.from_numpy(u.present), torch.zeros(0))
                for n, u in zip(names, units)
            ]
            batch = collate_av(items, shapes["audio"], shapes["video"])
        with torch.no_grad():
            out = self.model(move(batch, self.device))
        logits = out["logits"] if isinstance(out, dict) else out
        probs = activate(logits, self.task).float().cpu().numpy()
        extras = {k: v.detach().float().cpu().numpy().reshape(len(units), -1) for k, v in out.items() if k != "logits"} if isinstance(out, dict) else {}
        for row, unit in enumerate(units):
            unit.outputs = {"probs": probs[row], **{k: v[row] for k, v in extras.items()}}

    def _row(self, unit: _Unit, window_level: bool) -> dict[str, Any]:
        from ssl_aver.metrics import binarize

        row: dict[str, Any] = {"clip": unit.clip, "path": unit.path}
        if window_level:
            row.update({"window": unit.window, "start": unit.start, "end": unit.end})
        if unit.error is not None:
            return {**row, "modalities": unit.condition, "probabilities": {}, "top": None, "error": unit.error}
        probs = unit.outputs["probs"]
        if self.task == "regression":
            row.update({"modalities": unit.condition, "attributes": {c: float(v) for c, v in zip(self.classes, probs)}, "top": None})
        else:
            row.update({"modalities": unit.condition, "probabilities": {c: float(p) for c, p in zip(self.classes, probs)},
                        "top": self.classes[int(np.argmax(probs))]})
        if self.task == "multilabel":
            row["labels"] = [c for c, on in zip(self.classes, binarize(probs[None])[0]) if on]
        for name, values in unit.outputs.items():
            if name != "probs":
                row[name] = float(values[0]) if len(values) == 1 else [float(v) for v in values]
        row["error"] = None
        return row

    def predict(self, path_or_paths: str | Path | Sequence[str | Path], modalities: str = "auto", window_level: bool = False,
                progress: bool = False) -> list[dict[str, Any]]:
        """Per clip (or per 2 s window): probability of each emotion, top emotion, decision, modalities used.

        Inputs are media files or folders (searched recursively for media files). Each result is
        {"clip", "path", ["window", "start", "end",] "modalities", "probabilities": {emotion: p},
        "top", ["labels": multi-hot decision of a multi-label head,] [other head outputs such as
        "valence",] "error"} with `error` None, or the reason a clip could not be used.
        """
        from ssl_aver.progress import tqdm

        self._wanted(modalities)
        inputs = collect_inputs([path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths))
        pending: list[_Unit] = []
        done: list[_Unit] = []

        def flush() -> None:
            if pending:
                self._forward(pending)
                pending.clear()

        with tempfile.TemporaryDirectory(prefix="ssl-aver-predict-") as tmp:
            for clip, path in tqdm(inputs, desc="predict", unit="clip", disable=not progress):
                for unit in self._units(clip, path, modalities, window_level, Path(tmp)):
                    done.append(unit)
                    if unit.error is None:
                        pending.append(unit)
                        if len(pending) >= self.batch_size:
                            flush()
            flush()
        return [self._row(unit, window_level) for unit in done]


def _reason(err: Exception) -> str:
    """The error-row text of a clip that failed; a UserError that is not about the clip is re-raised.

    Decoders and extractors raise MediaError for files they cannot use, but a library may raise
    its own error on an odd file: that becomes the clip's reason too, and the other clips go on.
    """
    if isinstance(err, UserError) and not isinstance(err, MediaError):
        raise err
    if isinstance(err, MediaError):
        return str(err)
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}"


def _window_bounds(duration: float) -> list[Any]:
    from ssl_aver.windows import window_bounds

    return window_bounds(duration)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    """16 kHz float WAV: read back bit-exact by ssl_aver.media.load_audio."""
    import soundfile as sf

    from ssl_aver.media import SAMPLE_RATE

    sf.write(str(path), np.asarray(audio, np.float32), SAMPLE_RATE, subtype="FLOAT")


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(clip id, path) of every input: a file as given (clip = its stem), a folder's media files
    recursively (clip = path under the folder without extension). A missing input is a UserError."""
    from ssl_aver.media import MEDIA_EXTENSIONS

    out: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
            if not files:
                raise UserError(f"no media files ({', '.join(sorted(MEDIA_EXTENSIONS))}) under {path}")
            out += [(p.relative_to(path).with_suffix("").as_posix(), str(p)) for p in files]
        elif path.is_file():
            out.append((path.stem, str(path)))
        else:
            raise UserError(f"input not found: {path}")
    return out


def load(run_dir: str | Path, split: int = 0, device: str = "auto", batch_size: int = 16, check_features: bool = True) -> Predictor:
    """The head of split `split` of a fine-tuning run, ready to predict media files."""
    return Predictor(run_dir, split=split, device=device, batch_size=batch_size, check_features=check_features)


def to_frame(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> Any:
    """The rows as a table: clip, path, [window, start, end,] one probability column per emotion
    (one value column per attribute for a regression run), top, [labels (';'-joined),]
    modalities, [other outputs,] error."""
    import pandas as pd

    records = []
    for row in rows:
        record = {k: row[k] for k in ("clip", "path", "window", "start", "end") if k in row}
        values = row.get("attributes", row.get("probabilities", {}))
        record.update({c: values.get(c, math.nan) for c in classes})
        record["top"] = row["top"]
        if "labels" in row or any("labels" in r for r in rows):
            record["labels"] = ";".join(row.get("labels") or [])
        record["modalities"] = row["modalities"]
        for key, value in row.items():
            if key not in RESERVED_COLUMNS and key not in ("probabilities", "attributes"):
                if isinstance(value, list):
                    record.update({f"{key}_{i}": v for i, v in enumerate(value)})
                else:
                    record[key] = value
        record["error"] = row["error"] or ""
        records.append(record)
    return pd.DataFrame.from_records(records)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a fine-tuning run directory (output_dir of `ssl-aver finetune`)")
    parser.add_argument("inputs", nargs="+", help="media files or folders (searched recursively); any format ffmpeg decodes, any sample rate")
    parser.add_argument("--out", default=None, help="CSV to write (default: print the table)")
    parser.add_argument("--modalities", default="auto", choices=MODES, help="auto: every modality the head reads that a file has")
    parser.add_argument("--window-level", action="store_true", help="one prediction per 2 s window (1.5 s hop) for long recordings")
    parser.add_argument("--split", type=int, default=0, help="which split's model to use (split_XX)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=16, help="clips (or windows) per forward pass")
    parser.add_argument("--no-feature-check", action="store_true", help="do not compare the extractors' weight fingerprints with the run's")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    predictor = load(args.run, split=args.split, device=args.device, batch_size=args.batch_size, check_features=not args.no_feature_check)
    rows = predictor.predict(args.inputs, modalities=args.modalities, window_level=args.window_level, progress=not args.quiet)
    frame = to_frame(rows, predictor.classes)
    failed = sum(r["error"] is not None for r in rows)
    if args.out:
        from ssl_aver.io import write_dataframe

        write_dataframe(Path(args.out), frame)
        print(f"{len(rows) - failed} predictions, {failed} failed -> {args.out}")
    else:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0
