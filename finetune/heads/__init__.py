"""Head registry: a head is one module; adding one is one line here ("name": "module:Class").

A head class is an nn.Module built by `Head.from_config(cfg, n_classes, encoder)` with
`forward(batch) -> logits [B, C]` and `inputs` (the modalities it consumes).
"""

from __future__ import annotations

import importlib

HEADS: dict[str, str] = {
    "ser": "finetune.heads.ser:SERHead",
}


def head_class(name: str):
    """The class registered as `name` (UserError naming the choices when unknown)."""
    from ssl_aver.errors import UserError

    if name not in HEADS:
        raise UserError(f"unknown head '{name}'; choose one of: {', '.join(sorted(HEADS))}")
    module, _, cls = HEADS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
