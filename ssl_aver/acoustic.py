"""Acoustic input features of paper 1 (Sec. 4.2): openSMILE ComParE_2016 LLDs + deltas, 130-d.

The stock ComParE_2016 config frames at 20/60 ms with a 10 ms hop; the paper uses 32 ms
windows with a 16 ms step. We generate a derived config once per process in a cache folder:

- both framers (the 60 ms pitch framer and the 20 ms spectral framer) get frameSize 0.032 and
  frameStep 0.016, so every LLD row sits on one 16 ms grid (choice: the paper names a single
  window length; a 32 ms pitch frame still resolves F0 above ~31 Hz);
- the included LLD file is copied under a name unique to this toolkit and included by its
  absolute path (openSMILE looks includes up in the current directory first, so a stray file
  named like the stock one would otherwise silently change the features);
- the functionals are left out (only frame-level output is needed), and one extra
  cVectorConcat joins `lld` (65) and `lld_de` (65) into a single 130-column level;
- the buffer-mode includes are passed as options with absolute paths.

openSMILE repeats its last frame one to three times at the end of input; rows with a duplicate
start time are dropped, and row i covers [i * FRAME_HOP_S, i * FRAME_HOP_S + FRAME_LENGTH_S].
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ssl_aver.io import atomic_write_text

FRAME_HOP_S = 0.016
FRAME_LENGTH_S = 0.032
N_FEATURES = 130
SAMPLE_RATE = 16000

_LEVEL = "ssl_aver_lld_all"
_LLD_INC = "ssl_aver_compare2016_lld_32ms_16ms.conf.inc"
_MAIN_CONF = "ssl_aver_compare2016_lld_32ms_16ms.conf"
_TIME_EPS = 1e-6


def _opensmile_root() -> Path:
    import opensmile

    return Path(opensmile.__file__).resolve().parent / "core" / "config"


def _derived_lld_inc(stock: str) -> str:
    """The stock LLD include with both framers set to 32 ms / 16 ms."""
    text, n_size = re.subn(r"(?m)^frameSize\s*=\s*0\.0[26]0\s*$", f"frameSize = {FRAME_LENGTH_S:.3f}", stock)
    text, n_step = re.subn(r"(?m)^frameStep\s*=\s*0\.010\s*$", f"frameStep = {FRAME_HOP_S:.3f}", text)
    if n_size != 2 or n_step != 2:
        raise RuntimeError(
            f"unexpected openSMILE ComParE_2016 LLD config: found {n_size} frameSize / {n_step} frameStep "
            "lines instead of 2 each; this opensmile version is not supported"
        )
    return text


def _main_conf(lld_inc: Path) -> str:
    return (
        "[componentInstances:cComponentManager]\n"
        "instance[dataMemory].type=cDataMemory\n\n"
        "\\{\\cm[source{?}:include external source]}\n\n"
        f"\\{{{lld_inc}}}\n\n"
        "[componentInstances:cComponentManager]\n"
        "instance[is13_lldconcat].type=cVectorConcat\n"
        "instance[is13_llddeconcat].type=cVectorConcat\n"
        "instance[ssl_aver_allconcat].type=cVectorConcat\n\n"
        "[is13_lldconcat:cVectorConcat]\n"
        "reader.dmLevel = is13_lld_nzsmo;is13_lldA_smo;is13_lldB_smo\n"
        "writer.dmLevel = lld\n"
        "includeSingleElementFields = 1\n\n"
        "[is13_llddeconcat:cVectorConcat]\n"
        "reader.dmLevel = is13_lld_nzsmo_de;is13_lldA_smo_de;is13_lldB_smo_de\n"
        "writer.dmLevel = lld_de\n"
        "includeSingleElementFields = 1\n\n"
        "[ssl_aver_allconcat:cVectorConcat]\n"
        "reader.dmLevel = lld;lld_de\n"
        f"writer.dmLevel = {_LEVEL}\n"
        "includeSingleElementFields = 1\n\n"
        "\\{\\cm[sink{?}:include external sink]}\n"
    )


def _cache_root() -> Path:
    base = os.environ.get("SSL_AVER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ssl_aver"
    )
    root = Path(base)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:
        root = Path(tempfile.gettempdir()) / f"ssl_aver-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        root.mkdir(parents=True, exist_ok=True)
    return root


@functools.lru_cache(maxsize=1)
def config_path() -> Path:
    """Write (once per process) the derived 32 ms / 16 ms ComParE LLD config; return its path.

    The folder name is a hash of the stock config, so an opensmile upgrade gets a fresh copy.
    Files are written atomically, so parallel workers never read a half-written config.
    """
    stock = (_opensmile_root() / "compare" / "ComParE_2016_core.lld.conf.inc").read_text(encoding="utf-8")
    lld = _derived_lld_inc(stock)
    digest = hashlib.sha256(lld.encode("utf-8")).hexdigest()[:16]
    folder = _cache_root() / "opensmile" / digest
    inc = folder / _LLD_INC
    main = folder / _MAIN_CONF
    text = _main_conf(inc)
    if not inc.is_file() or inc.read_text(encoding="utf-8") != lld:
        atomic_write_text(inc, lld)
    if not main.is_file() or main.read_text(encoding="utf-8") != text:
        atomic_write_text(main, text)
    return main


@functools.lru_cache(maxsize=1)
def _extractor() -> Any:
    import opensmile

    shared = _opensmile_root() / "shared"
    options = {
        "bufferModeRbLagConf": str(shared / "BufferModeRbLag.conf.inc"),
        "bufferModeConf": str(shared / "BufferMode.conf.inc"),
    }
    smile = opensmile.Smile(feature_set=str(config_path()), feature_level=_LEVEL, options=options)
    if len(smile.feature_names) != N_FEATURES:
        raise RuntimeError(f"derived openSMILE config yields {len(smile.feature_names)} features, expected {N_FEATURES}")
    return smile


def feature_names() -> list[str]:
    """The 130 column names (65 ComParE LLDs, then their 65 deltas)."""
    return list(_extractor().feature_names)


def n_frames_for(duration_s: float) -> int:
    """Number of full 32 ms frames (16 ms hop) in `duration_s` seconds of audio."""
    if duration_s + _TIME_EPS < FRAME_LENGTH_S:
        return 0
    return int(math.floor((duration_s - FRAME_LENGTH_S) / FRAME_HOP_S + _TIME_EPS)) + 1


def compare_lld(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """ComParE_2016 LLD + delta features, float32 [n_frames, 130], 32 ms windows / 16 ms hop.

    `audio` is mono float in [-1, 1] (values beyond are clipped: openSMILE takes 16-bit PCM).
    Audio shorter than one frame gives zero rows.
    """
    signal = np.asarray(audio, dtype=np.float32).reshape(-1)
    expected = n_frames_for(signal.size / float(sample_rate))
    if expected == 0:
        return np.zeros((0, N_FEATURES), dtype=np.float32)
    signal = np.clip(signal, -1.0, 32767.0 / 32768.0)
    frame = _extractor().process_signal(signal, sample_rate)
    starts = frame.index.get_level_values("start").total_seconds().to_numpy()
    keep = np.r_[True, np.diff(starts) > _TIME_EPS]
    values = frame.to_numpy(dtype=np.float32)[keep]
    starts = starts[keep]
    n = min(expected, values.shape[0])
    grid = np.arange(n) * FRAME_HOP_S
    if not np.allclose(starts[:n], grid, atol=1e-4):
        raise RuntimeError("openSMILE frames are not on the expected 16 ms grid")
    return np.ascontiguousarray(values[:n])


def window_frames(features: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The rows of `features` whose 32 ms frame lies wholly inside [start_s, end_s].

    Frame i covers [i*0.016, i*0.016 + 0.032], so a 2 s window holds 123 or 124 frames
    depending on where it starts on the 16 ms grid.
    """
    first = max(0, int(math.ceil(start_s / FRAME_HOP_S - _TIME_EPS)))
    last = int(math.floor((end_s - FRAME_LENGTH_S) / FRAME_HOP_S + _TIME_EPS))
    last = min(last, features.shape[0] - 1)
    if last < first:
        return features[0:0]
    return features[first : last + 1]
