"""Pretext-task pseudo-labels of paper 1 (section 3) and the builder that writes the window store.

One module per task, registered here by one line. A task module provides
`STATS` (raw per-window statistic columns), `LABELS` (label columns), `NEEDS_FACE`,
`window_stats(clip, windows, settings) -> list[dict]` (per-clip phase) and
`make_labels(table, settings) -> (labels DataFrame, info dict)` (finalize phase).
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: task name (as given to --tasks) -> module
TASKS: dict[str, str] = {
    "energy": "pretext.energy",
    "landmarks": "pretext.landmarks",
    "au": "pretext.au_emotion",
}


def load_task(name: str) -> ModuleType:
    """The module of pretext task `name` (see TASKS)."""
    return importlib.import_module(TASKS[name])
