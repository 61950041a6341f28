"""`ssl-aver finetune --config RECIPE [key=value ...]`: fine-tune a head over K speaker-independent splits.

For every split the head is trained on train actors, chosen on dev (early stopping on dev loss,
best-dev weights restored) and evaluated once on test, in each of its test conditions
(audio-visual, audio-only, video-only). Inputs come from feature stores that are extracted
once per corpus and feature config, then reused. The run directory holds the resolved config,
the splits CSV, per split its predictions (clip + one probability column per emotion), metrics
and weights, and overall `metrics.json` (per split + mean/std over splits) and `metrics.md`.

A run folder is reused only for the inputs it was computed from (`ssl_aver.provenance`):
`inputs.json` records the config (less keys that cannot change a result), the encoder weights'
sha256, the feature stores' fingerprints and the sha256 of the label table and the splits. An
interrupted run with the same inputs keeps its finished splits; a finished split from other
inputs (a smoke run, a retrained encoder at the same path) is never reported: the run stops
with the changed inputs named, or with `--force` recomputes every split.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_aver.config import load_config, save_config
from ssl_aver.errors import UserError
from ssl_aver.io import read_json, seed_everything, sha256_file, write_dataframe, write_json

SUMMARY_METRICS = (
    "accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1",
    "weighted_f1", "sample_precision", "brier",
)

DEFAULTS: dict[str, Any] = {
    "head": "ser",
    "output_dir": "runs/finetune",
    "seed": 0,
    "device": "auto",
    "encoder": None,
    "freeze_encoder": False,
    "progress": True,
    "data": {
        # crema_d (a CREMA-D folder) or any corpus of ssl_aver.corpora.labelled.CORPORA (msp_improv,
        # msp_podcast, mer2023, csv), read through its manifest with `options`; `target_set` picks the
        # target group when a corpus offers several of the kind `target`
        "corpus": "crema_d",
        "options": None,
        "target_set": None,
        "root": None,
        "votes": None,
        "demographics": None,
        "condition": "av",
        "target": "multiclass",
        "tie_break": "intensity",
        "extra_targets": [],
        "clip_columns": None,
    },
    "features": {
        "cache": None,
        "audio": {"store": None, "config": "recipes/features/smile.yaml", "overrides": []},
        "video": {"store": None, "config": "recipes/features/mobilenet_v2.yaml", "overrides": []},
    },
    # protocol random (paper 1's repeated partitions) or kfold (every actor tested once), stratified by the
    # label table's `strata` columns (ssl_aver.splits); allow_shared_speakers admits a clip-level file that is not speaker independent
    "splits": {"k": 20, "seed": 0, "file": None, "fractions": [0.7, 0.15, 0.15], "protocol": "random", "strata": ["race", "sex"],
               "allow_shared_speakers": False,
               # protocol corpus: the corpus's own partitions, named -> train/dev/test (MSP-Podcast, MER2023)
               "partitions": {"Train": "train", "Development": "dev", "Test1": "test", "train": "train", "dev": "dev", "test": "test"}},
    "train": {
        "epochs": 20,
        "pretrained_epochs": 5,
        "lr": 7.25e-4,
        "batch_size": 32,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "lr_patience": 5,
        "lr_factor": 0.1,
        "early_stop_patience": 10,
        "regression_loss": "ccc",
        "max_steps": None,
        "grad_clip": 0.0,
        # no | bf16 | fp16 (torch.autocast of the training forward passes) and batches per optimizer step
        "mixed_precision": "no",
        "grad_accum": 1,
        "tensorboard": True,  # per-epoch curves of every split in OUT/tensorboard/split_XX
        "num_workers": 0,
        "num_threads": 0,
    },
    "eval": {"bootstrap": 1000, "groups": ["sex", "race", "age_group"], "dev_predictions": False},
}

#: Keys added after runs were recorded, left out of inputs.json at these values (the only ones
#: earlier runs had), so a run made before the key existed is still reused.
NEUTRAL_DEFAULTS = {"train.mixed_precision": "no", "train.grad_accum": 1}

#: Config keys that cannot change a result, or whose content a checksum in inputs.json stands for.
UNRECORDED_KEYS = ("output_dir", "progress", "device", "encoder", "features", "splits", "train.num_workers", "train.num_threads", "train.tensorboard")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
CONDITION_NAMES = {"av": "AV", "audio": "audio-only", "video": "video-only"}


def _recipe_path(value: str) -> Path:
    """A recipe path as given, else relative to the toolkit's checkout (recipes/...)."""
    path = Path(value)
    if not path.is_file() and (PACKAGE_ROOT / value).is_file():
        path = PACKAGE_ROOT / value
    if not path.is_file():
        raise UserError(f"feature config not found: {value}")
    return path


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """Recipe over DEFAULTS + the chosen head's `model:` defaults, checked strictly."""
    from finetune.heads import head_class

    # the head is read without key checks: the recipe's `model:` keys are checked against its defaults below
    head = load_config(config, [o for o in overrides if o.startswith("head=")]).get("head", DEFAULTS["head"]) if config else DEFAULTS["head"]
    defaults = {**DEFAULTS, "model": head_class(str(head)).defaults()}
    cfg = load_config(config, overrides, defaults)
    if not cfg.data.root:
        raise UserError("data.root is not set: give the corpus folder (CREMA-D: AudioWAV/, processedResults/tabulatedVotes.csv), e.g. data.root=/data/CREMA-D")
    if not Path(cfg.data.root).is_dir():
        raise UserError(f"data.root not found: {cfg.data.root}")
    if cfg.encoder is not None and not Path(cfg.encoder).is_dir():
        raise UserError(f"encoder directory not found: {cfg.encoder} (the `encoder/` folder of an `ssl-aver pretrain` run, or null)")
    if int(cfg.splits.k) < 1:
        raise UserError(f"splits.k must be >= 1, got {cfg.splits.k}")
    return cfg


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device=cuda but no GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


def _splits(cfg: DictConfig, labels: Any) -> list[dict[str, str]]:
    """The run's splits: `splits.file` (actor- or clip-level rows), else made by `splits.protocol`,
    stratified by the label table's `splits.strata` columns so every test set holds each sex and race."""
    from ssl_aver.splits import ClipSplit, actor_groups, check_speaker_independent, load_splits, make_splits

    if str(cfg.splits.protocol) == "corpus":
        return [corpus_partition(labels, dict(cfg.splits.partitions))]
    unknown = int(labels["actor"].isna().sum())
    if unknown:
        raise UserError(f"{unknown} clip(s) have no speaker id, so speaker-independent splits cannot place them; "
                        "use splits.protocol=corpus (the corpus's own partitions) or a splits.file")
    actors = sorted(labels["actor"].astype(str).unique())
    if cfg.splits.file:
        splits = load_splits(cfg.splits.file)[: int(cfg.splits.k)]
        for i, split in enumerate(splits):
            if not isinstance(split, ClipSplit):
                unknown = sorted(set(actors) - set(split))
                if unknown:
                    raise UserError(f"splits file {cfg.splits.file} has no set for actors {unknown[:5]}")
            elif not cfg.splits.allow_shared_speakers:
                check_speaker_independent(split, f"splits file {cfg.splits.file}, split {i}", "set splits.allow_shared_speakers=true to use it anyway")
        return splits
    strata = [str(s) for s in cfg.splits.strata]
    return make_splits(actors, int(cfg.splits.k), int(cfg.splits.seed), tuple(cfg.splits.fractions), str(cfg.splits.protocol),
                       actor_groups(labels, strata), strata)


def corpus_partition(labels: Any, names: dict[str, str]) -> Any:
    """The corpus's own partition as one clip-level split (`splits.protocol: corpus`): each clip's
    `partition` mapped to train / dev / test by `splits.partitions`; unmapped partitions are left out."""
    from ssl_aver.splits import ClipSplit

    if "partition" not in labels.columns or labels["partition"].isna().all():
        raise UserError("splits.protocol=corpus needs a corpus with its own partitions (MSP-Podcast, MER2023, a csv with a partition column)")
    sets = {str(c): names[str(p)] for c, p in zip(labels["clip"], labels["partition"]) if str(p) in names}
    found = set(sets.values())
    if not {"train", "dev", "test"} <= found:
        present = sorted(labels["partition"].dropna().astype(str).unique())
        raise UserError(f"splits.partitions {names} gives no {sorted({'train', 'dev', 'test'} - found)} set from the corpus partitions {present}")
    return ClipSplit(sets, dict(zip(labels["clip"].astype(str), labels["actor"].astype(str))))


def write_shared_splits(base: DictConfig, k: int, seed: int, path: Path) -> Path:
    """The K partitions every system of a table uses, from the labels and `splits` node of recipe `base`.

    Made afresh on every run (deterministic and cheap), so a changed k or seed never leaves
    the systems on an old file; their inputs.json then records the splits actually used. A
    `splits.file` of the recipe other than `path` itself (e.g. imported published partitions)
    is copied in, checked, instead of making splits by `splits.protocol`.
    """

    from finetune.data import load_task
    from ssl_aver.splits import save_splits

    task = load_task(base.data)
    given = base.splits.file if base.splits.file and Path(base.splits.file).resolve() != Path(path).resolve() else None
    cfg = OmegaConf.merge(base, {"splits": {"k": int(k), "seed": int(seed), "file": given}})
    save_splits(_splits(cfg, task.labels), path)
    return path


def train_settings(cfg: DictConfig) -> Any:
    """TrainSettings of a recipe (`pretrained_epochs` when starting from a pretrained encoder)."""
    from finetune.trainer import TrainSettings

    def optional(value: Any) -> int | None:
        return None if value is None else int(value)

    t = cfg.train
    return TrainSettings(
        epochs=int(t.pretrained_epochs if cfg.encoder else t.epochs), lr=float(t.lr), batch_size=int(t.batch_size),
        optimizer=str(t.optimizer), weight_decay=float(t.weight_decay), betas=tuple(t.betas), lr_patience=optional(t.lr_patience),
        lr_factor=float(t.lr_factor), early_stop_patience=optional(t.early_stop_patience), grad_clip=float(t.grad_clip),
        max_steps=optional(t.max_steps), mixed_precision=str(t.mixed_precision), grad_accum=int(t.grad_accum),
    )


def inputs_record(cfg: DictConfig, task: Any, stores: dict[str, Path], splits: list[dict[str, str]]) -> dict[str, Any]:
    """What a run's results depend on (written as inputs.json; see the module docstring)."""
    from ssl_aver import provenance

    neutral = [key for key, value in NEUTRAL_DEFAULTS.items() if OmegaConf.select(cfg, key) == value]
    return {
        "config": provenance.config_record(cfg, (*UNRECORDED_KEYS, *neutral)),
        "encoder": provenance.encoder_fingerprint(cfg.encoder),
        "stores": {m: provenance.feature_store_fingerprint(p) for m, p in sorted(stores.items())},
        "labels_sha256": provenance.digest(task.labels.to_csv(index=False)),
        "splits_sha256": provenance.digest(splits),
    }


def feature_store(cfg: DictConfig, modality: str, out: Path, media: dict[str, str] | None = None) -> Path:
    """The store of one modality: given (`features.<m>.store`) or extracted once into the cache
    (from `media`, clip -> file, when the corpus is read through a manifest)."""
    from ssl_aver.features.extract import extract_features

    node = cfg.features[modality]
    if node.store:
        if not Path(node.store).is_dir():
            raise UserError(f"features.{modality}.store not found: {node.store}")
        return Path(node.store)
    config = _recipe_path(str(node.config))
    cache = Path(cfg.features.cache) if cfg.features.cache else out / "features"
    clips = sorted(media.items()) if media is not None else None
    summary = extract_features(
        cfg.data.root, cache / config.stem, config_path=str(config), overrides=list(node.overrides), progress=bool(cfg.progress), clips=clips,
    )
    return Path(summary["store"])


def _loader(dataset: Any, batch_size: int, shuffle: bool, seed: int, workers: int, pin: bool = False) -> torch.utils.data.DataLoader:
    """Batches of a split: `workers` reader processes (kept across epochs), pinned memory for a GPU."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=dataset.collate, generator=generator, num_workers=workers,
        pin_memory=pin, persistent_workers=workers > 0,
    )


def _train_stats(dataset: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean/std of the LLD frames of the training clips (z-normalisation of paper 1, Sec. 4.2)."""
    if dataset.audio is None or len(dataset.audio_shape) != 1:
        return None
    total = np.zeros(dataset.audio_shape, np.float64)
    square = np.zeros_like(total)
    count = 0
    for clip, _ in dataset.rows:
        if clip not in dataset.audio:
            continue
        frames = np.asarray(dataset.audio.get(clip)[0], np.float64)
        total += frames.sum(0)
        square += (frames**2).sum(0)
        count += len(frames)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(square / max(count, 1) - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def default_loss(task: str, n_classes: int, regression_loss: str = "ccc"):
    """Cross-entropy on the argmax class (single label), BCE on the multi-hot targets or shares, or
    for regression 1 - mean CCC over the attributes (paper 2) or their MSE (`train.regression_loss`).

    Only the primary target columns count (batches may carry extra targets after them). The CCC
    loss is marked `corpus_level`: the dev criterion (model selection) is then 1 - CCC over the
    whole dev set, not a mean over batches.
    """
    if task == "multiclass":
        return lambda logits, targets: torch.nn.functional.cross_entropy(logits, targets[:, :n_classes].argmax(dim=1))
    if task == "regression":
        if regression_loss not in REGRESSION_LOSSES:
            raise UserError(f"train.regression_loss must be one of {REGRESSION_LOSSES}, got {regression_loss!r}")
        if regression_loss == "mse":
            return lambda outputs, targets: torch.nn.functional.mse_loss(outputs, targets[:, :n_classes])

        def ccc_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return concordance_loss(outputs, targets[:, :n_classes])

        ccc_loss.corpus_level = True  # type: ignore[attr-defined]
        return ccc_loss
    return lambda logits, targets: torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[:, :n_classes])


REGRESSION_LOSSES = ("ccc", "mse")


def concordance_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over attributes (columns) of Lin's CCC with population moments."""
    pm, tm = pred.mean(0), target.mean(0)
    cov = ((pred - pm) * (target - tm)).mean(0)
    ccc = 2 * cov / (pred.var(0, unbiased=False) + target.var(0, unbiased=False) + (pm - tm) ** 2 + 1e-8)
    return 1.0 - ccc.mean()


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of a head: all of them, and those fine-tuning updates (a frozen encoder is not)."""
    return {"total": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _aggregate(per_split: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/std over splits of the summary metrics and of any numeric metric a head's hook added."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys([*SUMMARY_METRICS, *(k for m in per_split for k in m)]):
        values = [m[key] for m in per_split if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)]
        if values:
            out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}
    return out


def _predictions_frame(clips: list[str], probs: np.ndarray, outputs: dict[str, np.ndarray], classes: list[str]) -> Any:
    """clip, one probability column per class, then the head's other outputs (name or name_<i>)."""
    import pandas as pd

    frame = pd.DataFrame(probs, columns=classes)
    frame.insert(0, "clip", clips)
    for name, values in outputs.items():
        values = values.reshape(len(clips), -1)
        for i in range(values.shape[1]):
            frame[name if values.shape[1] == 1 else f"{name}_{i}"] = values[:, i]
    return frame


def _markdown(cfg: DictConfig, summary: dict[str, Any]) -> str:
    corpus = f"CREMA-D ({cfg.data.condition} ratings, {cfg.data.target})" if cfg.data.corpus == "crema_d" else f"{cfg.data.corpus} ({cfg.data.target})"
    lines = [f"# {cfg.head} on {corpus}, {len(summary['splits'])} splits", ""]
    for modality, overall in summary["by_modality"].items():
        lines += [f"## test condition: {modality}", "", "| metric | mean | std |", "| --- | --- | --- |"]
        lines += [f"| {key} | {value['mean']:.4f} | {value['std']:.4f} |" for key, value in overall.items()]
        lines.append("")
    return "\n".join(lines)


def _datasets(cfg: DictConfig, head_cls: Any, task: Any, parts: dict[str, Any], stores: dict[str, Path], paths: dict[str, str], wave: bool) -> dict[str, Any]:
    from ssl_aver.av_dataset import AVDataset

    from finetune.data import WaveformDataset

    if wave:
        return {name: WaveformDataset(frame, task.all_targets, paths) for name, frame in parts.items()}
    audio, video = stores.get("audio"), stores.get("video")
    test_require = "both" if "av" in head_cls.eval_modalities else head_cls.require
    return {
        name: AVDataset(frame, task.all_targets, audio=audio, video=video, require=head_cls.require if name != "test" else test_require,
                        keep_dtype=True)  # float16 stores are upcast on the device (finetune.trainer.move)
        for name, frame in parts.items()
    }


def split_setup(
    cfg: DictConfig, head_cls: Any, task: Any, split: dict[str, str], stores: dict[str, Path], paths: dict[str, str], wave: bool, k: int,
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Label parts, datasets and the head's BuildContext of split `k` (finetune and robustness share it)."""
    from ssl_aver.splits import apply_split

    from finetune.heads import BuildContext

    parts = apply_split(task.labels, split)
    data = _datasets(cfg, head_cls, task, parts, stores, paths, wave)
    for name, dataset in data.items():
        if len(dataset) == 0:
            raise UserError(f"split {k}: the {name} set is empty; use more actors or other splits.fractions")
    train_targets = parts["train"][task.targets].to_numpy(np.float32)
    ctx = BuildContext(
        n_classes=len(task.classes), task=task.task, encoder_dir=cfg.encoder,
        audio_shape=getattr(data["train"], "audio_shape", None), video_shape=getattr(data["train"], "video_shape", None),
        audio_stats=None if wave or cfg.encoder else _train_stats(data["train"]),
        class_counts=_class_counts(task, train_targets),
        extra={"target_layout": task.target_layout(), "train_labels": parts["train"]},
    )
    return parts, data, ctx


def _class_counts(task: Any, train_targets: np.ndarray) -> np.ndarray:
    """Training positives per class (class-balanced losses); none for regression."""
    from ssl_aver.models.losses import positive_counts

    if task.task == "multilabel":
        return positive_counts(train_targets)
    if task.task == "regression":
        return np.zeros(len(task.classes))
    return np.bincount(train_targets.argmax(1), minlength=len(task.classes))


def _inference_record(cfg: DictConfig, task: Any, stores: dict[str, Path], wave: bool) -> dict[str, Any]:
    """What inference needs to rebuild the training-time inputs exactly (run dir self-contained).

    The head weights (with the fine-tuned encoder and its normalisation buffers inside) are in
    split_XX/model.safetensors; the pretrained encoder it started from is referenced with its
    checksum and its config.json (so the branch can be rebuilt from the run's own weights); each
    modality's extractor config is copied from the store it was trained on; `context` holds what
    the head's BuildContext needs besides the weights (frame shapes, whether the head keeps
    training-split normalisation buffers, the layout of the target columns).
    """
    from ssl_aver.features.store import FeatureStore

    record: dict[str, Any] = {
        "head": str(cfg.head),
        "task": task.task,
        "classes": task.classes,
        "inputs": "waveform" if wave else sorted(stores),
        "features": {},
        "encoder": None,
    }
    if cfg.encoder:
        import json

        weights = Path(cfg.encoder) / "model.safetensors"
        config = json.loads((Path(cfg.encoder) / "config.json").read_text(encoding="utf-8"))
        record["encoder"] = {"path": str(cfg.encoder), "sha256": sha256_file(weights) if weights.is_file() else None, "config": config}
    shapes: dict[str, list[int]] = {}
    for modality, path in stores.items():
        meta = FeatureStore(path).meta
        record["features"][modality] = {k: meta.get(k) for k in ("extractor", "config", "config_hash", "fps", "frame_shape", "layers", "weights", "fingerprint")}
        shapes[modality] = list(meta["frame_shape"])
    audio = shapes.get("audio")
    record["context"] = {
        "audio_shape": audio,
        "video_shape": shapes.get("video"),
        "audio_stats": bool(not wave and not cfg.encoder and audio is not None and len(audio) == 1),
        "target_layout": {name: [part.start, part.stop] for name, part in task.target_layout().items()},
    }
    return record


@dataclass
class RunPlan:
    """Everything a run's splits share, prepared once (`plan_run`): the resolved inputs and where
    results go. `run_split` trains and evaluates one split of it; `summarize` writes the run."""

    cfg: DictConfig
    out: Path
    settings: Any
    device: torch.device
    head_cls: Any
    task: Any
    splits: list[Any]
    stores: dict[str, Path]
    paths: dict[str, str]
    wave: bool
    resume: bool
    groups: list[str]
    start: float = field(default_factory=time.perf_counter)


def plan_run(cfg: DictConfig, force: bool = False, write: bool = True, device: str | None = None) -> RunPlan:
    """Resolve a recipe's inputs (labels, splits, feature stores: extracted once into the cache)
    and claim its folder: finished splits are kept when the recorded inputs match, else a
    UserError names what changed, or `force` removes them. `write=False` (a grid worker, after
    the main process planned the run) only checks that the folder's record is this run's.
    `device` overrides `cfg.device` (a grid process's own device)."""
    from finetune.data import load_task
    from finetune.heads import head_class
    from finetune.heads.ser import encoder_kind

    from ssl_aver import provenance
    from ssl_aver.splits import save_splits

    out = Path(cfg.output_dir)
    if write:
        out.mkdir(parents=True, exist_ok=True)
    settings = train_settings(cfg)
    if int(cfg.train.num_threads):
        torch.set_num_threads(int(cfg.train.num_threads))
    seed_everything(int(cfg.seed))
    head_cls = head_class(str(cfg.head))
    task = load_task(cfg.data)
    supported = getattr(head_cls, "tasks", ("multiclass", "multilabel"))
    if task.task not in supported:
        raise UserError(f"head '{cfg.head}' does not support {task.task} targets (it supports {', '.join(supported)}); choose another data.target or head")
    wave = bool(cfg.encoder) and encoder_kind(cfg.encoder) == "wav2vec2"
    if wave and head_cls.inputs != ("audio",):
        raise UserError(f"head '{cfg.head}' cannot take a wav2vec2 encoder; use a feature store (features.audio) instead")
    splits = _splits(cfg, task.labels)  # before extracting features: a protocol the corpus cannot take costs nothing
    stores: dict[str, Path] = {}
    paths: dict[str, str] = {}
    if wave and task.media is not None:
        paths = dict(task.media["audio"])
    elif wave:
        from ssl_aver.corpora.crema_d import read_crema_d

        paths = {c.clip: c.audio for c in read_crema_d(cfg.data.root).clips if c.audio}
    else:
        stores = {m: feature_store(cfg, m, out, None if task.media is None else task.media[m]) for m in head_cls.inputs}
    # A split is finished once its metrics.json (written last) exists; it is reused only when the
    # run's inputs are unchanged, and stale splits (other inputs, --force) are removed first.
    record = inputs_record(cfg, task, stores, splits)
    if not write:
        changed = provenance.changed_inputs(read_json(out / provenance.RECORD) if (out / provenance.RECORD).is_file() else None, record)
        if changed:
            raise UserError(f"{out} was prepared for other inputs (changed: {provenance.describe(changed)}); rerun the grid")
        resume = True
    else:
        finished = sorted(out.glob("split_*/metrics.json"))
        resume = provenance.check_reuse(out, record, finished=bool(finished), force=force, what="fine-tuning run")
        if not resume:
            for stale in out.glob("split_*"):
                shutil.rmtree(stale)
        provenance.write_record(out, record)
        save_config(cfg, out)
        save_splits(splits, out / "splits.csv")
        write_json(out / "inference.json", _inference_record(cfg, task, stores, wave))
    return RunPlan(cfg, out, settings, _device(device or str(cfg.device)), head_cls, task, splits, stores, paths, wave, resume,
                   [g for g in cfg.eval.groups if g in task.labels.columns])


def split_done(plan: RunPlan, k: int) -> bool:
    """True when split k of the run is finished (its metrics.json, written last, and weights exist)."""
    split_dir = plan.out / f"split_{k:02d}"
    return plan.resume and (split_dir / "metrics.json").is_file() and (split_dir / "model.safetensors").is_file()


def run_split(plan: RunPlan, k: int) -> dict[str, Any]:
    """Train split k on train, choose it on dev, evaluate it once on test in every condition of
    the head; write split_XX/ (weights, predictions, metrics.json last). A finished split is read back."""
    from safetensors.torch import save_file

    from ssl_aver.metrics import evaluate_predictions, evaluate_regression

    from finetune.trainer import close_log, fit, predict_outputs

    cfg, task, head_cls = plan.cfg, plan.task, plan.head_cls
    split_dir = plan.out / f"split_{k:02d}"
    if split_done(plan, k):
        return read_json(split_dir / "metrics.json")
    batch, workers = int(cfg.train.batch_size), int(cfg.train.num_workers)
    log_attempt(split_dir)
    seed_everything(int(cfg.seed) + k)
    parts, data, ctx = split_setup(cfg, head_cls, task, plan.splits[k], plan.stores, plan.paths, plan.wave, k)
    model = head_cls.from_config(cfg.model, len(task.classes), ctx)
    if cfg.freeze_encoder and hasattr(model, "branch"):
        for p in model.branch.parameters():
            p.requires_grad_(False)
    loss_fn = getattr(model, "loss", None) or default_loss(task.task, len(task.classes), str(cfg.train.regression_loss))
    pin = plan.device.type == "cuda"
    loaders = (_loader(data["train"], batch, True, int(cfg.seed) + k, workers, pin), _loader(data["dev"], batch, False, 0, workers, pin))
    trainer = getattr(model, "fit", None)
    log_dir = str(plan.out / "tensorboard" / f"split_{k:02d}") if cfg.train.tensorboard else None
    if log_dir:
        shutil.rmtree(log_dir, ignore_errors=True)  # an interrupted attempt's curves
    settings = replace(plan.settings, log_dir=log_dir)
    fit_start = time.perf_counter()
    try:
        result = (trainer or (lambda *a, **kw: fit(model, *a, **kw)))(*loaders, loss_fn=loss_fn, settings=settings, device=plan.device, progress=bool(cfg.progress))
    finally:
        close_log(log_dir)
    train_seconds = time.perf_counter() - fit_start
    metrics: dict[str, Any] = {}
    hook = getattr(model, "extra_metrics", None)
    if cfg.eval.dev_predictions:
        clips, probs, outputs = predict_outputs(model, loaders[1], plan.device, task.task, modality=head_cls.eval_modalities[0])
        write_dataframe(split_dir / "predictions_dev.csv", _predictions_frame(clips, probs, outputs, task.classes))
    for modality in head_cls.eval_modalities:
        clips, probs, outputs = predict_outputs(model, _loader(data["test"], batch, False, 0, workers, pin), plan.device, task.task, modality=modality)
        test = parts["test"].set_index("clip").loc[clips]
        if task.task == "regression":
            scores = evaluate_regression(probs, test[task.targets].to_numpy(np.float64), task.classes, int(cfg.eval.bootstrap), int(cfg.seed) + k)
        else:
            scores = evaluate_predictions(
                probs, test[task.targets].to_numpy(np.float32), task.task, task.classes,
                groups={g: test[g].to_numpy(dtype=object) for g in plan.groups} or None,
                known_groups={g: task.labels[g].to_numpy(dtype=object) for g in plan.groups},
                bootstrap=int(cfg.eval.bootstrap), seed=int(cfg.seed) + k,
            )
        added = hook(probs, outputs, test, scores) if hook is not None else {}
        scores.update(added)
        suffix = "" if modality == head_cls.eval_modalities[0] else f"_{modality}"
        write_dataframe(split_dir / f"predictions{suffix}.csv", _predictions_frame(clips, probs, outputs, task.classes))
        if not metrics:
            metrics = {**scores, "modalities": {}}
        keys = [key for key, value in scores.items() if isinstance(value, float)] if task.task == "regression" else [*SUMMARY_METRICS, *added]
        metrics["modalities"][modality] = {key: scores[key] for key in keys if key in scores}
    metrics.update({"split": k, "best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss, "history": result.history,
                    "parameters": parameter_counts(model), "train_seconds": round(train_seconds, 3)})
    weights = split_dir / "model.safetensors"
    save_file({n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}, str(weights.with_suffix(".tmp")))
    weights.with_suffix(".tmp").replace(weights)
    write_json(split_dir / "metrics.json", metrics)
    return metrics


def log_attempt(split_dir: Path) -> None:
    """Append who starts this split to split_XX/attempts.log (host, process i/N, pid, time): one
    line per attempt, so a grid's "every job once" and a resumed crash can be read off the folder."""
    import datetime
    import os
    import socket

    split_dir.mkdir(parents=True, exist_ok=True)
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(split_dir / "attempts.log", "a", encoding="utf-8") as handle:
        handle.write(f"{stamp} host={socket.gethostname()} process={rank}/{world} pid={os.getpid()}\n")


def summarize(plan: RunPlan, per_split: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's summary over its splits (mean/std per test condition), written as metrics.json/md."""
    from ssl_aver.splits import groups_in_test

    cfg, task, head_cls = plan.cfg, plan.task, plan.head_cls
    by_modality = {m: _aggregate([s["modalities"][m] for s in per_split]) for m in head_cls.eval_modalities}
    summary = {
        "head": str(cfg.head),
        "encoder": cfg.encoder,
        "task": task.task,
        "corpus": str(cfg.data.corpus),
        "condition": str(cfg.data.condition),
        "clips": len(task.labels),
        "stores": {m: str(p) for m, p in plan.stores.items()},
        "dropped": task.dropped,
        # per split: its scores, the test set's actors per group (sex, race, ...) and its fairness warnings
        "splits": [
            {**{k: m[k] for k in ("split", "best_epoch", "macro_f1", "micro_f1", "accuracy", "ccc") if k in m},
             "test_actors": groups_in_test(task.labels, plan.splits[m["split"]], plan.groups), "warnings": m.get("warnings", [])}
            for m in per_split
        ],
        "overall": by_modality[head_cls.eval_modalities[0]],
        "by_modality": by_modality,
        "seconds": round(time.perf_counter() - plan.start, 2),
        # the model's size and the fitting time summed over splits (reused splits keep the time they took)
        "parameters": per_split[0].get("parameters") if per_split else None,
        "train_seconds": round(sum(float(m.get("train_seconds", 0.0)) for m in per_split), 3),
    }
    write_json(plan.out / "metrics.json", summary)
    (plan.out / "metrics.md").write_text(_markdown(cfg, summary), encoding="utf-8")
    return summary


def finetune(cfg: DictConfig, force: bool = False) -> dict[str, Any]:
    """Run the recipe, split after split; returns the summary also written to OUT/metrics.json.

    Finished splits of an earlier run in the same folder are reused when its inputs.json
    matches; otherwise a UserError names what changed, or `force` recomputes every split.
    (`finetune.grid.run_grid` runs the splits of several runs across processes instead.)
    """
    from ssl_aver.progress import tqdm

    plan = plan_run(cfg, force)
    per_split = [run_split(plan, k) for k in tqdm(range(len(plan.splits)), desc=f"{cfg.head} splits", disable=not cfg.progress)]
    return summarize(plan, per_split)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/finetune/ser_crema_d.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/CREMA-D splits.k=5")
    parser.add_argument("--force", action="store_true", help="recompute finished splits whose inputs changed (default: stop and say what changed)")


def run(args: argparse.Namespace) -> int:
    summary = finetune(build_config(args.config, args.overrides), force=args.force)
    key, name = ("ccc", "CCC") if summary["task"] == "regression" else ("macro_f1", "macro-F1")
    for modality, overall in summary["by_modality"].items():
        score = overall[key]
        print(f"{summary['head']} [{modality}]: {name} {score['mean']:.4f} +- {score['std']:.4f} over {len(summary['splits'])} splits")
    return 0
