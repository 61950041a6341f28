"""What a finished artefact was computed from, so that a rerun reuses it only when that still holds.

Every artefact a later command may reuse (a pretrained encoder, a fine-tuning run and its
splits, an ablation set, an experiment system) writes `inputs.json` beside its outputs: the
resolved config less the keys that cannot change a result (output folders, progress bars,
thread and worker counts) and less the paths that are replaced by content checksums (encoder
weights' sha256, feature and window store fingerprints, the splits' and labels' sha256).

A rerun compares the record it would write with the one on disk (`check_reuse`): equal means
reuse; different means a one-line `UserError` naming what changed and the two ways on
(`--force`, which recomputes and replaces, or a new output folder). Paths are deliberately not
part of the record where a checksum stands for their content: a moved encoder is the same
encoder, and a retrained encoder at the same path is not.

Fingerprints are cheap by design (they run on every rerun): a feature store by its config hash
and the sha256 of its index (clip list, offsets, lengths); a window store by the sha256 of its
labels, index and meta files and the size of its frame file; an encoder by the sha256 of its
weights and config. Media files under a corpus root are not hashed; the corpus is identified
by its path and, for labelled corpora, by the sha256 of the label table built from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

from ssl_aver.errors import UserError
from ssl_aver.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

RECORD = "inputs.json"


def digest(value: Any) -> str:
    """sha256 of a JSON-serialisable value (sorted keys, so dict order never matters)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_record(cfg: Any, drop: Iterable[str]) -> dict[str, Any]:
    """The resolved config as plain data without the dotted keys in `drop` (absent ones ignored)."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg, default=str))
    assert isinstance(data, dict)
    for key in drop:
        node: Any = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def encoder_fingerprint(directory: str | Path | None) -> dict[str, str] | None:
    """sha256 of a pretrained encoder folder's weights and config (None for no encoder)."""
    if directory is None:
        return None
    root = Path(directory)
    return {name: sha256_file(root / name) for name in ("model.safetensors", "config.json") if (root / name).is_file()}


def feature_store_fingerprint(path: str | Path) -> dict[str, Any]:
    """A feature store's config hash, weights fingerprint and the sha256 of its clip index."""
    root = Path(path)
    meta = read_json(root / "meta.json")
    index = root / "index.json"
    return {
        "config_hash": meta.get("config_hash"),
        "weights": meta.get("fingerprint"),
        "index_sha256": sha256_file(index) if index.is_file() else None,
    }


def window_store_fingerprint(path: str | Path) -> dict[str, Any]:
    """A pretext window store's labels/index/meta sha256 and the byte size of its frames."""
    from ssl_aver.store import FEATURES_FILE, INDEX_FILE, LABELS_FILE, META_FILE

    root = Path(path)
    record: dict[str, Any] = {name: sha256_file(root / name) for name in (LABELS_FILE, INDEX_FILE, META_FILE) if (root / name).is_file()}
    frames = root / FEATURES_FILE
    record["features_bytes"] = frames.stat().st_size if frames.is_file() else None
    return record


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two records (nested dicts compared key by key)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix[:-1] or "record"]


FORCE_FIX = "rerun with --force to recompute and replace it, or choose a new output folder"


def changed_inputs(old: Mapping[str, Any] | None, record: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded inputs.json (None: there is none) and `record`."""
    return ["inputs.json (no record: made by an older ssl-aver)"] if old is None else differences(dict(old), dict(record))


def describe(changed: list[str], limit: int = 6) -> str:
    """The changed names for a one-line message."""
    return ", ".join(changed[:limit]) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")


def check_reuse(directory: str | Path, record: Mapping[str, Any], *, finished: bool, force: bool, what: str) -> bool:
    """True when `directory` holds results computed from exactly `record`'s inputs.

    `finished` says whether there is anything there to reuse or lose (finished splits, an
    encoder, checkpoints). Nothing finished: False (compute). Finished with equal inputs: True
    (reuse). Finished with other inputs: `UserError` naming what changed, or with `force` a
    one-line notice and False (the caller recomputes and replaces).
    """
    path = Path(directory) / RECORD
    if not finished:
        return False
    old = read_json(path) if path.is_file() else None
    changed = changed_inputs(old, record)
    if not changed:
        return True
    shown = describe(changed)
    if force:
        log.warning("%s in %s: inputs changed (%s); recomputing (--force)", what, directory, shown)
        return False
    raise UserError(f"{what} in {directory} was computed from other inputs (changed: {shown}); {FORCE_FIX}")


def write_record(directory: str | Path, record: Mapping[str, Any]) -> Path:
    """Write `inputs.json` (atomically) into `directory`."""
    return write_json(Path(directory) / RECORD, dict(record))
