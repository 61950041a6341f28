"""`ssl-aver robustness --run DIR`: missing-modality tests of any fine-tuned head (paper 4, Sec. V-A).

DIR is an `ssl-aver finetune` run: its config.yaml, splits.csv and split_XX/model.safetensors
are read back, each split's head is rebuilt with `finetune.heads.head_class(cfg.head)` and the
split's datasets with `finetune.run.split_setup` (exactly as fine-tuning built them, from the
same `data.*` options: the rebuilt label table is checked against the run's inputs.json), and
the weights are loaded. Every test clip is then evaluated under:

- clean input (macro-F1, Brier, per-emotion F1: paper 4's Tables 2 and 4);
- random frame masking of the audio, the video, and both (independent masks) at each level of
  `random.levels` (default 0-90% by 10, then 91-100% by 1: Fig. 3), for every seed;
- two-state Markov packet loss at each (p_L, p_N) of `markov.grid` (Figs. 4-5): `sync` = one
  chain shared by both modalities and aligned in time, `async` = an independent chain per
  modality; each point reports its approximate percentage of dropped frames (ADF): the
  stationary rate 100 p_L / (p_L + p_N) and the share measured on the test frames;
- 100% missing audio and 100% missing video (Table 3).

How a dropped frame reaches the model (`fills`, each a separate set of curves):
- `mask`: its values are zeroed AND its mask bit cleared (`ssl_aver.masking.drop_frames`; a
  modality left without frames also gets has_<m> = False): the model is told, and a head that
  honours its masks never sees the frame.
- `zero`: its values are zeroed, its mask bit and has_<m> stay on: the model is not told and
  reads the zeros as real frames, like a system without frame masks fed zero-filled features.
  100% missing under `zero` is every frame of the clip zeroed at its original length, masks on.
  Zero means zero in the stored features, before any normalisation inside the head (a head that
  z-normalises its inputs sees -mean/std), as a zero-filling decoder would deliver them.
Paper 4 lets RAVER attend only to unmasked frames (Sec. V-A.2) and trains with modality dropout
by "zeroing out" features, but does not say how its baselines received the missing frames;
both are reported so heads that pool with masks can be compared both ways. The default runs
both (it doubles the masked conditions; `fills=[mask]` halves the time). The dropped frames
are the same under both fills: masks are drawn per clip from (seed, split, condition without
its fill, clip), so every compared head and fill sees the same masks on the same clips.
A condition that masks only a modality the head does not read is skipped, and one whose
predictions equal another's (0% loss = clean, 100% random loss of one modality = 100% missing)
is computed once.

The test split is streamed: each batch is read once, degraded under every condition and seed,
scored, and dropped, so memory holds one batch (not the split: a 25-layer WavLM test split of
CREMA-D is ~20 GB). Several runs (`--compare`, or `runs:` in the config) are compared only when
they test the same splits with the same actors and the same clips (else a UserError); with
`clips: common` each is restricted to the clips all of them test. An `ssl-aver compare` folder
given as a run stands for every system of the comparison (paper 4 Figs. 3 and 5: all systems on
one plot) and defaults to common clips (`clips: auto`), since its unimodal systems also test
clips without a face that the audio-visual ones cannot.

Intervals (`ci`): percentile bootstrap over TEST CLIPS of the mean over splits and seeds: each
replicate resamples the clips of every split (with replacement, the same resample for all
seeds and conditions of a split), recomputes the metric per split and seed and averages them.
`spread` gives the min/max over splits x seeds. Compared runs are plotted on one figure per
condition (solid = mask, dashed = zero). `--sweep` runs paper 4's context-length study
(Fig. 2): fine-tune once per N_ctx value, then average macro-F1 over the audio and video
masking levels on the development set.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from ssl_aver.config import load_config, save_config, to_dict
from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text, seed_everything, write_json
from ssl_aver.masking import aligned_markov_loss, default_levels, drop_frames, markov_loss, random_drop, stationary_loss_rate
from ssl_aver.progress import tqdm

MODALITIES = ("audio", "video")
FILLS = {
    "mask": "dropped frames zeroed and their mask bits cleared (the model is told)",
    "zero": "dropped frames zeroed, masks and has_<modality> left on (the model is not told)",
}

DEFAULTS: dict[str, Any] = {
    "runs": [],
    "output_dir": None,
    "data_set": "test",
    "splits": None,
    "seeds": [0, 1, 2],
    "fills": ["mask", "zero"],
    "random": {"modalities": ["audio", "video", "both"], "levels": None},
    "markov": {
        "modes": ["sync", "async"],
        "grid": [[0.01, 0.5], [0.05, 0.5], [0.1, 0.5], [0.1, 0.3], [0.2, 0.3], [0.3, 0.3], [0.3, 0.1], [0.5, 0.1]],
        "step_s": None,
    },
    "missing": True,
    "bootstrap": 1000,
    "ci_level": 0.95,
    "batch_size": 32,
    "device": "auto",
    "num_threads": 0,
    "progress": True,
    "plot": True,
    # same: refuse runs whose evaluated clips differ; common: evaluate every run on the clips all of them
    # evaluate (an audio-only head also tests clips without a face); auto: common for a comparison folder
    "clips": "auto",
}

SWEEP_DEFAULTS: dict[str, Any] = {
    "recipe": "recipes/finetune/raver_crema_d.yaml",
    "output_dir": "runs/sweep/raver_context",
    "key": "model.n_ctx",
    "values": [16, 32, 64, 128, 256],
    "overrides": [],
    "robustness": {**DEFAULTS, "data_set": "dev", "fills": ["mask"], "random": {"modalities": ["audio", "video"], "levels": None},
                   "markov": {**DEFAULTS["markov"], "modes": []}, "missing": False},
}


# ----------------------------------------------------------------------------- conditions


@dataclass
class Condition:
    """One test point: which frames are lost (family, name, level / chain) and how they reach the model (fill)."""

    family: str  # clean | random | markov | missing
    name: str  # audio | video | both | sync | async
    level: float | None = None
    p_loss: float | None = None
    p_recover: float | None = None
    touches: tuple[str, ...] = ()
    seeded: bool = False
    fill: str | None = None  # mask | zero (None: clean)

    @property
    def draw_key(self) -> str:
        """What the masks are drawn from: without the fill, so both fills lose the same frames."""
        if self.family == "markov":
            return f"markov/{self.name}/{self.p_loss}/{self.p_recover}"
        return f"{self.family}/{self.name}" + ("" if self.level is None else f"/{self.level}")

    @property
    def key(self) -> str:
        return self.draw_key + ("" if self.fill is None else f"/{self.fill}")

    @property
    def computed_as(self) -> str:
        """Key of the condition whose predictions equal this one's (computed once)."""
        if (self.family == "random" and self.level == 0.0) or (self.family == "markov" and self.p_loss == 0.0):
            return Condition("clean", "av").key
        if self.family == "random" and self.level == 1.0 and self.name in MODALITIES:
            return Condition("missing", self.name, 1.0, fill=self.fill).key
        return self.key


def _clip_rng(condition: Condition, split: int, seed: int, clip: str, stream: str = "") -> np.random.Generator:
    words = [seed, split, zlib.crc32(condition.draw_key.encode()), zlib.crc32(clip.encode()), zlib.crc32(stream.encode())]
    return np.random.default_rng(words)


def _fills(cfg: DictConfig) -> list[str]:
    fills = [str(f) for f in cfg.fills]
    unknown = [f for f in fills if f not in FILLS]
    if unknown or not fills or len(set(fills)) != len(fills):
        raise UserError(f"fills: got {fills}; give a non-empty list of distinct modes from {list(FILLS)}, e.g. fills=[mask,zero]")
    return fills


def conditions(cfg: DictConfig, inputs: Sequence[str]) -> list[Condition]:
    """The test points of the config that apply to a head reading `inputs` (clean first, then per fill)."""
    out = [Condition("clean", "av")]
    levels = [float(v) for v in (cfg.random.levels if cfg.random.levels is not None else default_levels())]
    for name in cfg.random.modalities:
        if name not in ("audio", "video", "both"):
            raise UserError(f"random.modalities: unknown '{name}'; choose audio, video or both")
    for mode in cfg.markov.modes:
        if mode not in ("sync", "async"):
            raise UserError(f"markov.modes: unknown '{mode}'; choose sync or async")
    grid = []
    for point in cfg.markov.grid:
        if len(point) != 2:
            raise UserError(f"markov.grid entries are [p_L, p_N] pairs, got {list(point)}")
        p_loss, p_recover = float(point[0]), float(point[1])
        stationary_loss_rate(p_loss, p_recover)
        grid.append((p_loss, p_recover))
    for fill in _fills(cfg):
        for name in cfg.random.modalities:
            touches = MODALITIES if name == "both" else (name,)
            if all(m in inputs for m in touches):
                out += [Condition("random", name, level, touches=touches, seeded=level not in (0.0, 1.0), fill=fill) for level in levels]
        if all(m in inputs for m in MODALITIES):
            out += [Condition("markov", mode, p_loss=p, p_recover=q, touches=MODALITIES, seeded=True, fill=fill)
                    for mode in cfg.markov.modes for p, q in grid]
        if cfg.missing:
            out += [Condition("missing", m, 1.0, touches=(m,), fill=fill) for m in MODALITIES if m in inputs]
    return out


@dataclass
class ClipFrames:
    """Per modality, clip -> (frames in the store, frames per second): for time alignment."""

    table: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)

    @classmethod
    def from_stores(cls, stores: dict[str, Any]) -> "ClipFrames":
        table = {}
        for modality, store in stores.items():
            index = store.index
            table[modality] = {c: (int(n), float(f)) for c, n, f in zip(store.clips, index["lengths"], index["fps"])}
        return cls(table)


def frame_drops(batch: dict[str, Any], condition: Condition, split: int, seed: int, frames: ClipFrames, step_s: float | None) -> dict[str, torch.Tensor]:
    """{modality: frames lost [B, T] (valid frames only)} under `condition`, deterministic in seed/split/clip."""
    if condition.family == "clean":
        return {}
    present = [m for m in condition.touches if batch.get(m) is not None]
    if condition.family == "missing" or (condition.family == "random" and condition.level == 1.0):
        return {m: batch[f"{m}_mask"].clone() for m in present}
    drops = {m: torch.zeros_like(batch[f"{m}_mask"]) for m in present}
    for row, clip in enumerate(batch["clips"]):
        if condition.family == "random":
            for m in drops:
                valid = batch[f"{m}_mask"][row].numpy()
                drops[m][row] = torch.from_numpy(random_drop(valid, float(condition.level), _clip_rng(condition, split, seed, clip, m)))
            continue
        counts = {m: frames.table[m][clip][0] for m in drops}
        if condition.name == "sync":
            lost = aligned_markov_loss(counts, {m: frames.table[m][clip][1] for m in drops}, condition.p_loss, condition.p_recover,
                                       _clip_rng(condition, split, seed, clip), step_s)
        else:
            lost = {m: markov_loss(n, condition.p_loss, condition.p_recover, _clip_rng(condition, split, seed, clip, m)) for m, n in counts.items()}
        for m, loss in lost.items():
            n = min(len(loss), drops[m].shape[1])
            drops[m][row, :n] = torch.from_numpy(loss[:n])
    return {m: drop & batch[f"{m}_mask"] for m, drop in drops.items()}


def apply_fill(batch: dict[str, Any], drops: dict[str, torch.Tensor], fill: str | None) -> dict[str, Any]:
    """The batch with the dropped frames delivered as `fill` says (see the module docstring; None = mask)."""
    for m, drop in drops.items():
        if fill == "zero":
            batch = dict(batch)
            keep = ~drop.view(*drop.shape, *([1] * (batch[m].dim() - 2)))
            batch[m] = batch[m] * keep.to(batch[m].dtype)
        else:
            batch = drop_frames(batch, m, drop)
    return batch


def degrade(batch: dict[str, Any], condition: Condition, split: int, seed: int, frames: ClipFrames, step_s: float | None) -> dict[str, Any]:
    """Apply `condition` to a collated batch: its frame drops, delivered by its fill."""
    return apply_fill(batch, frame_drops(batch, condition, split, seed, frames, step_s), condition.fill)


# ----------------------------------------------------------------------------- scoring


def sample_stats(probs: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """Per test clip [N, 3C + 1]: true positives, false positives, false negatives per class,
    and the squared error sum over classes (Brier numerator), as ssl_aver.metrics defines them."""
    from ssl_aver.metrics import argmax_one_hot, binarize

    if task == "multilabel":
        y_true, y_pred = binarize(targets), binarize(probs)
    else:
        y_true, y_pred = argmax_one_hot(targets), argmax_one_hot(probs)
    tp = y_true * y_pred
    fp = (1 - y_true) * y_pred
    fn = y_true * (1 - y_pred)
    sq = ((probs - y_true) ** 2).sum(axis=1, keepdims=True)
    return np.concatenate([tp, fp, fn, sq], axis=1).astype(np.float32)


def _scores(sums: np.ndarray, n: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Macro-F1, per-class F1 and Brier from summed stats [R, 3C + 1] and sample counts [R]."""
    tp, fp, fn = (sums[:, i * n_classes : (i + 1) * n_classes] for i in range(3))
    den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    return {"macro_f1": f1.mean(axis=1), "per_class_f1": f1, "brier": sums[:, -1] / (n * n_classes)}


def bootstrap_counts(n: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, n] float32: how often each clip is drawn in each bootstrap resample."""
    rng = np.random.default_rng([seed, 7])
    draws = rng.integers(0, n, size=(replicates, n)) + np.arange(replicates)[:, None] * n
    return np.bincount(draws.ravel(), minlength=replicates * n).reshape(replicates, n).astype(np.float32)


def summarise(stats: list[list[np.ndarray]], weights: list[np.ndarray], n_classes: int, level: float) -> dict[str, Any]:
    """Mean over splits x seeds and the bootstrap interval over test clips (see the module docstring).

    stats[k][s]: per-clip stats of split k, seed s; weights[k]: bootstrap counts [B, N_k] of split k.
    """
    point: list[dict[str, np.ndarray]] = []
    boot: list[dict[str, np.ndarray]] = []
    for per_seed, w in zip(stats, weights):
        for s in per_seed:
            point.append(_scores(s.sum(axis=0, keepdims=True), np.array([len(s)], float), n_classes))
            if w.size:
                boot.append(_scores(w @ s, w.sum(axis=1), n_classes))
    tail = (1 - level) / 2 * 100

    def entry(key: str, column: int | None = None) -> dict[str, Any]:
        pick = (lambda d: d[key][:, column]) if column is not None else (lambda d: d[key])
        values = np.array([float(pick(p)[0]) for p in point])
        out: dict[str, Any] = {"mean": float(values.mean()), "spread": [float(values.min()), float(values.max())]}
        if boot:
            lo, hi = np.percentile(np.mean([pick(b) for b in boot], axis=0), [tail, 100 - tail])
            out["ci"] = [float(lo), float(hi)]
        return out

    return {"macro_f1": entry("macro_f1"), "brier": entry("brier"), "per_class_f1": [entry("per_class_f1", j) for j in range(n_classes)]}


# ----------------------------------------------------------------------------- runs


@dataclass
class RunSplit:
    """One split of a run, ready to evaluate: the head, a loader over its test clips, labels and frame table."""

    k: int
    model: torch.nn.Module
    loader: torch.utils.data.DataLoader
    targets: dict[str, np.ndarray]
    frames: ClipFrames

    @property
    def n_clips(self) -> int:
        return len(self.loader.dataset)


class LoadedRun:
    """A fine-tuning run read back from its directory."""

    def __init__(self, path: str | Path) -> None:
        from ssl_aver.io import read_json

        from finetune.heads import head_class
        from finetune.run import build_config

        self.path = Path(path)
        if not (self.path / "config.yaml").is_file() or not (self.path / "splits.csv").is_file():
            raise UserError(f"{self.path} is not an `ssl-aver finetune` run (config.yaml and splits.csv expected)")
        self.cfg = build_config(self.path / "config.yaml")
        self.head_cls = head_class(str(self.cfg.head))
        self.metrics = read_json(self.path / "metrics.json") if (self.path / "metrics.json").is_file() else {}
        self.inputs = read_json(self.path / "inputs.json") if (self.path / "inputs.json").is_file() else {}
        from finetune.heads.ser import encoder_kind

        if self.cfg.encoder and encoder_kind(self.cfg.encoder) == "wav2vec2":
            raise UserError(f"run {self.path} reads raw waveforms (wav2vec2); the robustness suite needs feature-store inputs")
        self.label = f"{self.cfg.head} ({self.path.name})"
        self._clips: dict[tuple[int, str], list[str]] = {}
        self.keep: dict[int, set[str]] = {}  # split -> the clips to evaluate, when restricted to those common to compared runs

    @functools.cached_property
    def task(self) -> Any:
        """The run's label table, rebuilt from every data option fine-tuning used (checked against inputs.json)."""
        from ssl_aver import provenance

        from finetune.data import load_task

        task = load_task(self.cfg.data)
        trained = self.inputs.get("labels_sha256")
        if trained and provenance.digest(task.labels.to_csv(index=False)) != trained:
            raise UserError(f"run {self.path} is stale: the labels rebuilt from its config.yaml differ from those it was trained on "
                            "(inputs.json labels_sha256; the corpus, votes, data.* files or label code changed); rerun `ssl-aver finetune` on it")
        return task

    @functools.cached_property
    def splits(self) -> list[dict[str, str]]:
        from ssl_aver.splits import load_splits

        return load_splits(self.path / "splits.csv")

    @functools.cached_property
    def stores(self) -> dict[str, Path]:
        """The run's feature store per modality it reads (as fine-tuning recorded them)."""
        from finetune.run import feature_store

        known = self.metrics.get("stores", {})
        return {m: Path(known[m]) if m in known and Path(known[m]).is_dir() else feature_store(self.cfg, m, self.path) for m in self.head_cls.inputs}

    def split_ids(self, wanted: Sequence[int] | None) -> list[int]:
        have = [k for k in range(len(self.splits)) if (self.path / f"split_{k:02d}" / "model.safetensors").is_file()]
        if not have:
            raise UserError(f"run {self.path} has no split_XX/model.safetensors; let `ssl-aver finetune` finish first")
        if wanted is None:
            return have
        missing = sorted(set(int(k) for k in wanted) - set(have))
        if missing:
            raise UserError(f"run {self.path} has no trained model for split(s) {missing}; it has {have}")
        return [int(k) for k in wanted]

    def eval_clips(self, k: int, data_set: str) -> list[str]:
        """The clips split k's `data_set` evaluates (as fine-tuning's datasets select them; no features read)."""
        from ssl_aver.splits import apply_split

        from finetune.run import _datasets

        if (k, data_set) not in self._clips:
            parts = apply_split(self.task.labels, self.splits[k])
            self._clips[k, data_set] = [clip for clip, _ in _datasets(self.cfg, self.head_cls, self.task, parts, self.stores, {}, False)[data_set].rows]
        return self._clips[k, data_set]

    def iter_splits(self, ids: Sequence[int], data_set: str, batch_size: int, device: torch.device) -> Iterator[RunSplit]:
        """Each split rebuilt as finetune.run built it, with the saved weights loaded; its clips are read lazily."""
        from ssl_aver.features.store import FeatureStore
        from ssl_aver.models.encoder import load_safetensors

        from finetune.run import split_setup

        task = self.task
        stores = self.stores
        frames = ClipFrames.from_stores({m: FeatureStore(p) for m, p in stores.items()})
        for k in ids:
            seed_everything(int(self.cfg.seed) + k)
            parts, data, ctx = split_setup(self.cfg, self.head_cls, task, self.splits[k], stores, {}, False, k)
            model = self.head_cls.from_config(self.cfg.model, len(task.classes), ctx)
            state = load_safetensors(self.path / f"split_{k:02d}" / "model.safetensors", f"split {k} head")
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise UserError(f"{self.path}/split_{k:02d}/model.safetensors does not fit head '{self.cfg.head}' as configured ({str(err).splitlines()[0]})") from None
            model.to(device).eval()
            dataset = data[data_set]
            if k in self.keep:
                dataset.rows = [row for row in dataset.rows if row[0] in self.keep[k]]
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate)
            table = parts[data_set].set_index("clip")
            targets = {clip: row for clip, row in zip(table.index, table[task.targets].to_numpy(np.float32))}
            yield RunSplit(k, model, loader, targets, frames)


def check_comparable(runs: Sequence[LoadedRun], wanted: Sequence[int] | None, data_set: str, common: bool = False) -> dict[str, int]:
    """Refuse runs that would be compared on different splits or clips (one line naming both runs and
    the difference). With `common`, runs whose clips differ are all restricted to the clips every
    run evaluates (`LoadedRun.keep`); returns how many clips each run then leaves out."""
    first = runs[0]
    ids = first.split_ids(wanted)
    if common:
        for other in runs[1:]:
            if other.split_ids(wanted) != ids or any(first.splits[k] != other.splits[k] for k in ids):
                break
        else:
            left = {r.label: 0 for r in runs}
            for k in ids:
                shared = set.intersection(*(set(r.eval_clips(k, data_set)) for r in runs))
                if not shared:
                    raise UserError(f"split {k}: no {data_set} clip is evaluated by every run; they cannot be compared")
                for r in runs:
                    r.keep[k] = shared
                    left[r.label] += len(r.eval_clips(k, data_set)) - len(shared)
            return left
    for other in runs[1:]:
        pair = f"cannot compare runs {first.path} and {other.path}"
        other_ids = other.split_ids(wanted)
        if other_ids != ids:
            raise UserError(f"{pair}: they have trained splits {ids} and {other_ids}; choose common ones with splits=[...]")
        for k in ids:
            a, b = first.splits[k], other.splits[k]
            if a != b:
                moved = sorted(set(a) ^ set(b)) or sorted(x for x in a if a[x] != b[x])
                raise UserError(f"{pair}: split {k} assigns actors differently (e.g. actor {moved[0]}); train both on the same splits.csv (splits.file)")
            clips_a, clips_b = first.eval_clips(k, data_set), other.eval_clips(k, data_set)
            if clips_a != clips_b:
                only_a, only_b = sorted(set(clips_a) - set(clips_b)), sorted(set(clips_b) - set(clips_a))
                example = (only_a or only_b or ["(same clips, other order)"])[0]
                raise UserError(f"{pair}: split {k} has different {data_set} clips ({len(only_a)} only in the first, {len(only_b)} only "
                                f"in the second, e.g. {example}); train both on the same corpus, labels and feature stores, or set clips=common")
    return {r.label: 0 for r in runs}


def _device(name: str) -> torch.device:
    from finetune.run import _device as run_device

    return run_device(name)


def evaluate_run(run: LoadedRun, cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Every condition of the config on every chosen split of one run; JSON-ready results.

    Each test batch is read once and run under every distinct condition and seed before the
    next is read, so memory holds one batch whatever the size of the split.
    """
    from finetune.trainer import predict

    points = conditions(cfg, run.head_cls.inputs)
    seeds = [int(s) for s in cfg.seeds] or [0]
    ids = run.split_ids(cfg.splits)
    task_kind = run.task.task  # distribution targets are multi-label too
    if task_kind == "regression":
        raise UserError(f"run {run.path} is a regression run; the robustness suite scores emotion classes (F1, Brier) only")
    classes = list(run.task.classes)
    computed: dict[str, Condition] = {}
    for p in points:
        computed.setdefault(p.computed_as, p)
    runs_of = {key: [(seed, p) for seed in (seeds if p.seeded else seeds[:1])] for key, p in computed.items()}
    stats: dict[str, list[list[np.ndarray]]] = {key: [] for key in computed}
    frames_seen: dict[str, dict[str, list[int]]] = {key: {m: [0, 0] for m in MODALITIES} for key in computed}
    nonfinite: dict[str, int] = {key: 0 for key in computed}
    weights: list[np.ndarray] = []
    clips: list[int] = []
    bar = tqdm(total=0, desc=f"robustness {run.label}", unit="batch", disable=not cfg.progress, leave=False)
    for split in run.iter_splits(ids, str(cfg.data_set), int(cfg.batch_size), device):
        bar.total += len(split.loader)
        bar.refresh()
        weights.append(bootstrap_counts(split.n_clips, int(cfg.bootstrap), split.k))
        clips.append(split.n_clips)
        parts: dict[str, list[list[np.ndarray]]] = {key: [[] for _ in todo] for key, todo in runs_of.items()}
        for batch in split.loader:
            targets = np.stack([split.targets[c] for c in batch["clips"]])
            for key, todo in runs_of.items():
                for i, (seed, point) in enumerate(todo):
                    drops = frame_drops(batch, point, split.k, seed, split.frames, cfg.markov.step_s)
                    for m in MODALITIES:
                        if batch.get(f"{m}_mask") is not None:
                            frames_seen[key][m][0] += int(drops[m].sum()) if m in drops else 0
                            frames_seen[key][m][1] += int(batch[f"{m}_mask"].sum())
                    _, probs = predict(split.model, [apply_fill(batch, drops, point.fill)], device, task_kind)
                    bad = ~np.isfinite(probs).all(axis=1)
                    nonfinite[key] += int(bad.sum())
                    probs[bad] = 1.0 / probs.shape[1]
                    parts[key][i].append(sample_stats(probs, targets, task_kind))
            bar.update(1)
        for key, per_seed in parts.items():
            stats[key].append([np.concatenate(chunks) for chunks in per_seed])
        del split
    bar.close()
    level = float(cfg.ci_level)
    scores = {key: summarise(stats[key], weights, len(classes), level) for key in computed}
    results: dict[str, Any] = {"run": str(run.path), "head": str(run.cfg.head), "label": run.label, "splits": ids,
                               "clips": clips, "seeds": seeds, "classes": classes, "clean": {},
                               "fills": {fill: {"random": {}, "markov": {}, "missing": {}} for fill in _fills(cfg)}}
    for point in points:
        key = point.computed_as
        seen = frames_seen[key]
        dropped = {m: 100.0 * d / t for m, (d, t) in seen.items() if t and m in point.touches}
        entry: dict[str, Any] = {"macro_f1": scores[key]["macro_f1"], "dropped_pct": dropped}
        if nonfinite[key]:
            entry["nonfinite"] = nonfinite[key]
        if point.family in ("clean", "missing"):
            entry["brier"] = scores[key]["brier"]
            entry["per_class_f1"] = dict(zip(classes, scores[key]["per_class_f1"]))
        if point.family == "clean":
            results["clean"] = entry
            continue
        into = results["fills"][point.fill][point.family]
        if point.family == "missing":
            into[point.name] = entry
        elif point.family == "random":
            into.setdefault(point.name, []).append({"level": point.level, **entry})
        else:
            both = [seen[m] for m in MODALITIES]
            adf = 100.0 * sum(d for d, _ in both) / max(sum(t for _, t in both), 1)
            into.setdefault(point.name, []).append({
                "p_loss": point.p_loss, "p_recover": point.p_recover,
                "adf_expected": 100.0 * stationary_loss_rate(point.p_loss, point.p_recover), "adf": adf, **entry,
            })
    return results


# ----------------------------------------------------------------------------- report

LINESTYLES = {"mask": "-", "zero": "--"}


def _save_png(fig: Any, path: Path) -> None:
    """savefig through a temporary file in the same folder, renamed into place (never a half-written plot)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _curves(results: list[dict[str, Any]], family: str, name: str) -> list[tuple[int, str, str, list[dict[str, Any]]]]:
    """(run index, run label, fill, points) of every run and fill that has this curve."""
    return [(i, r["label"], fill, by_fill[family][name]) for i, r in enumerate(results)
            for fill, by_fill in r["fills"].items() if name in by_fill[family]]


def _plot(results: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    curves: list[tuple[str, str, str, Callable[[dict[str, Any]], str]]] = [
        ("random", name, f"random masking of {name}", lambda p: f"{100 * p['level']:.0f}") for name in ("audio", "video", "both")
    ] + [
        ("markov", name, f"Markov packet loss ({'shared mask' if name == 'sync' else 'independent masks'})",
         lambda p: f"{p['adf']:.0f}%\n({p['p_loss']:g},{p['p_recover']:g})") for name in ("sync", "async")
    ]
    for family, name, title, tick in curves:
        series = _curves(results, family, name)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for index, label, fill, points in series:
            x = np.arange(len(points))
            color = f"C{index % 10}"
            ax.plot(x, [p["macro_f1"]["mean"] for p in points], marker="o", ms=3, color=color, ls=LINESTYLES.get(fill, ":"), label=f"{label}, {fill}")
            if all("ci" in p["macro_f1"] for p in points):
                ax.fill_between(x, [p["macro_f1"]["ci"][0] for p in points], [p["macro_f1"]["ci"][1] for p in points], color=color, alpha=0.12)
        points = series[0][3]
        ax.set_xticks(np.arange(len(points)), [tick(p) for p in points], fontsize=7)
        ax.set_xlabel("missing frames (%)" if family == "random" else "ADF (p_L, p_N)")
        ax.set_ylabel("macro-F1")
        ax.set_title(f"{title}\nsolid: mask (frames removed, model told); dashed: zero (frames zeroed, masks on)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{family}_{name}.png"
        _save_png(fig, path)
        plt.close(fig)
        written.append(str(path))
    return written


def _fmt(entry: dict[str, Any]) -> str:
    ci = entry.get("ci")
    return f"{entry['mean']:.3f}" + (f" ({ci[0]:.3f}, {ci[1]:.3f})" if ci else "")


def _curve_tables(results: list[dict[str, Any]]) -> list[str]:
    """One table of mean macro-F1 per masking curve: a row per run and fill, a column per level / chain."""
    lines: list[str] = []
    for family, name, title, head in [
        *[("random", n, f"Random masking of {n} (Fig. 3)", lambda p: f"{100 * p['level']:g}%") for n in ("audio", "video", "both")],
        *[("markov", n, f"Markov packet loss, {n} (Fig. 5)", lambda p: f"({p['p_loss']:g},{p['p_recover']:g}) {p['adf']:.0f}%") for n in ("sync", "async")],
    ]:
        series = _curves(results, family, name)
        if not series:
            continue
        columns = [head(p) for p in series[0][3]]
        lines += ["", f"## {title}, macro-F1", "", "| model | fill | " + " | ".join(columns) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in columns) + " |"]
        lines += [f"| {label} | {fill} | " + " | ".join(f"{p['macro_f1']['mean']:.3f}" for p in points) + " |" for _, label, fill, points in series]
    return lines


def markdown(results: list[dict[str, Any]]) -> str:
    """Tables 3 and 4 of paper 4 for the compared runs (per fill), the clean macro-F1, and the curves."""
    fills = list(results[0]["fills"]) if results else []
    missing_cols = [(m, f) for m in MODALITIES for f in fills]
    lines = ["# Missing-modality robustness", "", "Fills: " + "; ".join(f"`{f}` = {FILLS[f]}" for f in fills) + ".", "",
             "## Clean input and 100% missing modality (Table 3)", "",
             "| model | clean macro-F1 | " + " | ".join(f"100% missing {m}, {f}" for m, f in missing_cols) + " |",
             "| --- | --- | " + " | ".join("---" for _ in missing_cols) + " |"]
    for r in results:
        miss = [_fmt(r["fills"][f]["missing"][m]["macro_f1"]) if m in r["fills"][f]["missing"] else "-" for m, f in missing_cols]
        lines.append(f"| {r['label']} | {_fmt(r['clean']['macro_f1'])} | " + " | ".join(miss) + " |")
    classes = results[0]["classes"] if results else []
    lines += ["", "## Calibration and per-emotion F1, clean input (Table 4)", "",
              "| model | Brier | " + " | ".join(classes) + " |", "| --- | --- | " + " | ".join("---" for _ in classes) + " |"]
    for r in results:
        clean = r["clean"]
        lines.append(f"| {r['label']} | {clean['brier']['mean']:.3f} | " + " | ".join(_fmt(clean["per_class_f1"][c]) for c in classes) + " |")
    lines += _curve_tables(results)
    lines += ["", "Intervals: bootstrap over test clips of the mean over splits and seeds.", ""]
    return "\n".join(lines)


def robustness(cfg: DictConfig, runs: Sequence[str | Path]) -> dict[str, Any]:
    """Evaluate every run (an `ssl-aver compare` folder: each of its systems) under every condition;
    write robustness.json, robustness.md and plots."""
    if not runs:
        raise UserError("no run to test: give --run DIR (an `ssl-aver finetune` output folder)")
    conditions(cfg, MODALITIES)  # check the grid before loading anything
    if cfg.data_set not in ("train", "dev", "test"):
        raise UserError(f"data_set must be train, dev or test, got {cfg.data_set!r}")
    if cfg.clips not in ("auto", "same", "common"):
        raise UserError(f"clips must be auto, same or common, got {cfg.clips!r}")
    folders = [str(r) for r in runs]
    runs = expand_runs(folders)
    from_compare = any((Path(f) / "compare.json").is_file() for f in folders)
    common = cfg.clips == "common" or (cfg.clips == "auto" and from_compare)
    loaded = [LoadedRun(r) for r in runs]
    labels = [r.label for r in loaded]
    for i, run in enumerate(loaded):
        if labels.count(run.label) > 1:
            run.label = f"{run.label} #{i + 1}"
    left_out = check_comparable(loaded, cfg.splits, str(cfg.data_set), common) if len(loaded) > 1 else {}
    out = Path(cfg.output_dir) if cfg.output_dir else loaded[0].path / "robustness"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out, "robustness_config.yaml")
    if int(cfg.num_threads):
        torch.set_num_threads(int(cfg.num_threads))
    device = _device(str(cfg.device))
    results = []
    with torch.no_grad():
        for run in loaded:
            results.append(evaluate_run(run, cfg, device))
    report = {
        "ci": f"{100 * float(cfg.ci_level):g}% percentile bootstrap ({int(cfg.bootstrap)} resamples) over test clips of the "
              "mean over splits and masking seeds; spread = min/max over splits x seeds",
        "data_set": str(cfg.data_set),
        "fills": {f: FILLS[f] for f in _fills(cfg)},
        "clips": str(cfg.clips),
        "left_out": left_out,
        "runs": results,
        "plots": _plot(results, out) if cfg.plot else [],
        "config": to_dict(cfg),
    }
    write_json(out / "robustness.json", report)
    atomic_write_text(out / "robustness.md", markdown(results))
    report["output_dir"] = str(out)
    return report


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """A robustness config over DEFAULTS (strict keys)."""
    return load_config(config, overrides, DEFAULTS)


# ----------------------------------------------------------------------------- context sweep


def context_sweep(config: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Paper 4's Fig. 2: fine-tune once per value of `key` (N_ctx), test robustness on dev, plot.

    Overrides starting with `finetune.` go to the fine-tuning recipe (e.g.
    `finetune.data.root=/data/CREMA-D`); the others to the sweep config. The score of a value
    is the mean macro-F1 over every level of the audio and video masking curves of every fill
    in `robustness.fills` (the paper averages its acoustic and visual ablations; the default
    fill is `mask`: RAVER attends only to the frames it is given).
    """
    from finetune.run import build_config as finetune_config
    from finetune.run import finetune

    sweep_overrides = [o for o in overrides if not o.startswith("finetune.")]
    recipe_overrides = [o[len("finetune."):] for o in overrides if o.startswith("finetune.")]
    cfg = load_config(config, sweep_overrides, SWEEP_DEFAULTS)
    if not cfg["values"]:
        raise UserError(f"the sweep over {cfg.key} has no values")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out, "sweep_config.yaml")
    rows = []
    for value in cfg["values"]:
        run_dir = out / f"{cfg.key.split('.')[-1]}_{value}"
        ft = finetune_config(_recipe(str(cfg.recipe)), [*cfg.overrides, *recipe_overrides, f"{cfg.key}={value}", f"output_dir={run_dir}"])
        finetune(ft)
        rob = load_config(None, [], DEFAULTS)
        rob.merge_with(cfg.robustness)
        rob.output_dir = str(run_dir / "robustness")
        report = robustness(rob, [run_dir])
        curves = [p["macro_f1"]["mean"] for by_fill in report["runs"][0]["fills"].values() for pts in by_fill["random"].values() for p in pts]
        rows.append({"value": value, "run": str(run_dir), "mean_macro_f1": float(np.mean(curves)) if curves else math.nan,
                     "clean_macro_f1": report["runs"][0]["clean"]["macro_f1"]["mean"]})
    best = max(rows, key=lambda r: r["mean_macro_f1"])
    summary = {"key": str(cfg.key), "rows": rows, "best": best["value"], "plot": _plot_sweep(rows, str(cfg.key), out)}
    write_json(out / "sweep.json", summary)
    return summary


def _recipe(value: str) -> Path:
    """A recipe path as given, else relative to the toolkit's checkout."""
    from finetune.run import PACKAGE_ROOT

    for path in (Path(value), PACKAGE_ROOT / value):
        if path.is_file():
            return path
    raise UserError(f"sweep recipe not found: {value}")


def _plot_sweep(rows: list[dict[str, Any]], key: str, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(len(rows))
    ax.plot(x, [r["mean_macro_f1"] for r in rows], marker="o", label="mean over masking levels")
    ax.plot(x, [r["clean_macro_f1"] for r in rows], marker="s", ls="--", label="clean")
    ax.set_xticks(x, [str(r["value"]) for r in rows])
    ax.set_xlabel(key)
    ax.set_ylabel("macro-F1 (dev)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "context_sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ----------------------------------------------------------------------------- CLI + demo


def expand_runs(paths: Sequence[str | Path]) -> list[str]:
    """Run folders, with an `ssl-aver compare` folder replaced by the runs of its systems."""
    from finetune.compare import system_runs

    out: list[str] = []
    for path in paths:
        out += [str(p) for p in system_runs(path)] if (Path(path) / "compare.json").is_file() else [str(path)]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", help="an `ssl-aver finetune` output folder, or an `ssl-aver compare` folder (every system), to test")
    what.add_argument("--sweep", help="a context-length sweep config, e.g. recipes/finetune/raver_context_sweep.yaml")
    parser.add_argument("--compare", nargs="+", default=[], help="more run folders to test and plot beside --run")
    parser.add_argument("--config", default=None, help="robustness config, e.g. recipes/robustness/crema_d.yaml")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/robustness, or output_dir of the config)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. seeds=[0] markov.modes=[sync]")


def run(args: argparse.Namespace) -> int:
    if args.sweep:
        summary = context_sweep(args.sweep, args.overrides)
        for row in summary["rows"]:
            print(f"{summary['key']}={row['value']}: mean macro-F1 over masking levels {row['mean_macro_f1']:.4f}")
        print(f"best {summary['key']}: {summary['best']}  (plot: {summary['plot']})")
        return 0
    cfg = build_config(args.config, args.overrides)
    if args.out:
        cfg.output_dir = args.out
    report = robustness(cfg, [args.run, *args.compare, *[r for r in cfg.runs if r not in (args.run, *args.compare)]])
    for r in report["runs"]:
        missing = ", ".join(f"100% missing {m} ({fill}) {v['macro_f1']['mean']:.4f}" for fill, by_fill in r["fills"].items()
                            for m, v in by_fill["missing"].items())
        print(f"{r['label']}: clean macro-F1 {r['clean']['macro_f1']['mean']:.4f}" + (f"; {missing}" if missing else ""))
    print(f"report: {Path(report['output_dir']) / 'robustness.json'}")
    return 0
