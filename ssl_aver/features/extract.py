"""`ssl-aver features extract`: run one extractor over a corpus into a FeatureStore.

    ssl-aver features extract --corpus DIR --extractor NAME [--config YAML] [key=value ...]
                              --out STORE [--device auto|cpu|cuda] [--batch-size N]

The corpus is a CREMA-D-layout folder (AudioWAV/ and/or VideoFlash/: audio extractors read
AudioWAV/*.wav, face extractors VideoFlash/*.flv) or any folder of media (`scan_folder`).
The store is keyed by the extractor's resolved config and weights fingerprint: rerunning with
the same config resumes (finished clips are skipped), a different config is refused. Clips that
cannot be used are listed with their reasons in STORE/summary.json and the run goes on.
`device` and `batch_size` are run settings, not part of the key (they change float rounding
only).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ssl_aver.errors import MediaError, UserError
from ssl_aver.features import EXTRACTORS, Extractor, extractor_class
from ssl_aver.features.store import FeatureStore
from ssl_aver.io import write_json

#: keys every extractor config has besides its own
COMMON_DEFAULTS: dict[str, Any] = {"extractor": None, "store_dtype": "float32"}
_STORE_DTYPES = ("float32", "float16")


def resolve_device(device: str) -> str:
    """auto -> cuda when available else cpu; cuda without a GPU is a UserError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no GPU here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {device!r}")
    return device


def corpus_clips(corpus: str | Path, modality: str) -> tuple[list[tuple[str, str]], list[dict[str, str]], str]:
    """(clip id, media path) pairs for `modality`, clips that lack it (with reasons), layout name."""
    root = Path(corpus)
    if not root.is_dir():
        raise UserError(f"corpus folder not found: {root}")
    clips: list[tuple[str, str]] = []
    failures: list[dict[str, str]] = []
    if (root / "AudioWAV").is_dir() or (root / "VideoFlash").is_dir():
        from ssl_aver.corpora.crema_d import read_crema_d

        crema = read_crema_d(root)
        failures += [{"clip": s["clip"], "reason": s["reason"]} for s in crema.skipped]
        for clip in crema.clips:
            path = clip.audio if modality == "audio" else clip.video
            if path is None:
                folder = "AudioWAV/*.wav" if modality == "audio" else "VideoFlash/*.flv"
                failures.append({"clip": clip.clip, "reason": f"no {modality} file ({folder})"})
            else:
                clips.append((clip.clip, path))
        return clips, failures, "crema-d"
    from ssl_aver.corpora.folder import scan_folder

    manifest = scan_folder(root)
    failures += list(manifest.failures)
    for record in manifest.clips:
        if (record.has_audio if modality == "audio" else record.has_video):
            clips.append((record.clip, record.path))
        else:
            failures.append({"clip": record.clip, "reason": f"no {modality} stream"})
    if not clips and not failures:
        raise UserError(f"no media files under {root}")
    return clips, failures, "folder"


def resolve_config(extractor: str | None, config_path: str | None, overrides: Sequence[str]) -> tuple[type[Extractor], dict[str, Any]]:
    """The extractor class and its full resolved config (defaults < YAML < key=value)."""
    from omegaconf import OmegaConf

    from ssl_aver.config import load_config, to_dict

    named = None
    if config_path is not None and Path(config_path).is_file():
        named = OmegaConf.load(config_path).get("extractor")
    for item in overrides:
        if item.startswith("extractor="):
            named = item.partition("=")[2]
    if extractor and named and extractor != named:
        raise UserError(f"--extractor {extractor} contradicts extractor: {named} in the config; drop one of them")
    name = extractor or named
    if not name:
        raise UserError(f"name an extractor with --extractor ({', '.join(EXTRACTORS)}) or `extractor:` in the config")
    cls = extractor_class(str(name))
    cfg = to_dict(load_config(config_path, overrides, {**COMMON_DEFAULTS, **cls.defaults(), "extractor": name}))
    if cfg["store_dtype"] not in _STORE_DTYPES:
        raise UserError(f"store_dtype must be one of {_STORE_DTYPES}, got {cfg['store_dtype']!r}")
    return cls, cfg


def _groups(items: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _prefetched(extractor: Extractor, groups: Iterable[list[tuple[str, str]]]) -> Iterator[list[tuple[str, Any]]]:
    """Decode the next groups in one background thread while the current one is computed."""

    def load(group: list[tuple[str, str]]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for clip, path in group:
            try:
                out.append((clip, extractor.load(path)))
            except MediaError as err:
                out.append((clip, err))
        return out

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = deque()
        source = iter(groups)
        for group in source:
            pending.append(pool.submit(load, group))
            if len(pending) == 2:
                break
        while pending:
            done = pending.popleft().result()
            following = next(source, None)
            if following is not None:
                pending.append(pool.submit(load, following))
            yield done


def extract_features(
    corpus: str | Path,
    out: str | Path,
    extractor: str | None = None,
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    threads: int | None = None,
    clips: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Extract features of every clip of `corpus` into the store `out`; returns the summary.

    `clips` ((clip id, media path) pairs, e.g. from a labelled corpus's manifest) replaces the
    listing of the corpus folder.

    `threads` sets torch's CPU threads for the run (restored after). Measured on a busy 2-core
    machine: MobileNetV2 took 468 ms per 112 px crop with 2 threads and 18 ms with 1, because
    torch's spinning worker threads fight the decoding thread; use 1 when cores are scarce.
    """
    import torch

    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _extract(corpus, out, extractor, config_path, overrides, device, batch_size, progress, clips)
    finally:
        torch.set_num_threads(previous)


def _extract(
    corpus: str | Path,
    out: str | Path,
    extractor: str | None,
    config_path: str | None,
    overrides: Sequence[str],
    device: str,
    batch_size: int | None,
    progress: bool,
    listed: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    from ssl_aver.progress import tqdm

    from ssl_aver.config import save_config
    from ssl_aver.features.store import StoreWriter

    start = time.perf_counter()
    cls, cfg = resolve_config(extractor, config_path, overrides)
    device = resolve_device(device)
    clips, failures, layout = (list(listed), [], "manifest") if listed is not None else corpus_clips(corpus, cls.modality)
    n_corpus = len(clips) + len(failures)
    own = {k: v for k, v in cfg.items() if k not in COMMON_DEFAULTS}
    batch = int(batch_size or cls.default_batch_size)
    if batch < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch}")
    model = cls(own, device=device, batch_size=batch)
    info = model.describe()
    meta = {
        "extractor": cls.name,
        "modality": cls.modality,
        "config": cfg,
        "fingerprint": info["fingerprint"],
        "frame_shape": list(info["frame_shape"]),
        "dtype": cfg["store_dtype"],
        "layers": info["layers"],
        "fps": info["fps"],
        "weights": info["weights"],
        "has_mask": cls.modality == "video",
    }
    writer = StoreWriter(out, meta)
    save_config(cfg, writer.path)
    todo = [(clip, path) for clip, path in clips if not writer.done(clip)]
    skipped = len(clips) - len(todo)
    extracted = 0
    per_step = batch if cls.group_clips else 1
    bar = tqdm(total=len(todo), desc=f"features {cls.name}", unit="clip", disable=not progress)
    for group in _prefetched(model, _groups(todo, per_step)):
        ready = [(clip, item) for clip, item in group if not isinstance(item, MediaError)]
        failures += [{"clip": clip, "reason": str(item)} for clip, item in group if isinstance(item, MediaError)]
        if ready:
            for (clip, _), features in zip(ready, model.compute([item for _, item in ready])):
                writer.put(clip, features)
                extracted += 1
        bar.update(len(group))
    bar.close()
    if any(writer.shards.glob("*.npz")):
        store: FeatureStore | None = writer.consolidate()
    elif (writer.path / "index.json").is_file():
        store = FeatureStore(writer.path)
    else:
        store = None
    summary = {
        "store": str(writer.path),
        "extractor": cls.name,
        "layout": layout,
        "corpus": str(corpus),
        "config_hash": writer.meta["config_hash"],
        "weights": info["weights"],
        "device": device,
        "batch_size": batch,
        "clips_in_corpus": n_corpus,
        "clips_in_store": len(store) if store is not None else 0,
        "extracted_now": extracted,
        "skipped_done": skipped,
        "frames_in_store": int(store.index["total_frames"]) if store is not None else 0,
        "failures": failures,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(writer.path / "summary.json", summary)
    if store is None:
        raise UserError(f"no clip of {corpus} could be extracted ({len(failures)} failed; reasons in {writer.path / 'summary.json'})")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ex = sub.add_parser("extract", help="extract frame-level features of a corpus into a feature store")
    ex.add_argument("--corpus", required=True, help="a CREMA-D-layout folder (AudioWAV/, VideoFlash/) or any folder of media")
    ex.add_argument("--extractor", default=None, help=f"one of: {', '.join(EXTRACTORS)} (or `extractor:` in the config)")
    ex.add_argument("--config", default=None, help="YAML recipe (e.g. recipes/features/wavlm_large.yaml)")
    ex.add_argument("--out", required=True, help="the feature store folder (created, or resumed when its config matches)")
    ex.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ex.add_argument("--batch-size", type=int, default=None, help="clips per forward pass (audio) or face crops per CNN batch (video)")
    ex.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is fastest on a busy 2-core machine)")
    ex.add_argument("--quiet", action="store_true", help="no progress bar")
    ex.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. layers=12 every=3)")


def run(args: argparse.Namespace) -> int:
    summary = extract_features(
        args.corpus, args.out, extractor=args.extractor, config_path=args.config, overrides=args.overrides,
        device=args.device, batch_size=args.batch_size, progress=not args.quiet, threads=args.threads,
    )
    if summary["weights"] == "random":
        sys.stderr.write("warning: weights=random: these features come from an untrained network; use them for tests and smoke runs only\n")
    print(
        f"{summary['extracted_now']} clips extracted, {summary['skipped_done']} already done, "
        f"{len(summary['failures'])} failed -> {summary['store']} ({summary['clips_in_store']} clips, {summary['frames_in_store']} frames)"
    )
    for failure in summary["failures"][:10]:
        print(f"  failed {failure['clip']}: {failure['reason']}")
    if len(summary["failures"]) > 10:
        print(f"  ... {len(summary['failures']) - 10} more in {summary['store']}/summary.json")
    return 0
