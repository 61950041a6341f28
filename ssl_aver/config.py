"""YAML recipes with dotted `key=value` overrides (OmegaConf), checked against defaults.

Every command that takes a config merges it over its defaults in struct mode, so a misspelt
key names itself instead of being silently ignored, and writes the resolved config next to
its outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    first = str(err).splitlines()[0]
    return f"'{key}': {first}" if key else first


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> DictConfig:
    """Load `path` (YAML) over `defaults`, then apply `overrides` such as `train.epochs=3`.

    Keys absent from `defaults` are rejected (when defaults are given), naming the key.
    """
    base = OmegaConf.create(dict(defaults or {}))
    if defaults is not None:
        OmegaConf.set_struct(base, True)
    layers: list[DictConfig] = []
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            loaded = OmegaConf.load(p)
        except Exception as err:  # yaml errors come in several types
            raise UserError(f"cannot parse config {p}: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, DictConfig):
            raise UserError(f"config {p} must be a mapping of keys to values")
        layers.append(loaded)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key=value (e.g. train.epochs=3)")
    if overrides:
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as err:
            raise UserError(f"bad override: {_describe(err)}") from None
    try:
        cfg = OmegaConf.merge(base, *layers)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        source = f" in {path}" if path else ""
        raise UserError(f"unknown or invalid config key {_describe(err)}{source}") from None
    except TypeError:  # a dotted override that indexes into a list (systems.0.head=...) merges a mapping into it
        raise UserError(f"an override cannot change one item of a list ({', '.join(overrides)}); edit the YAML or give the whole list") from None
    assert isinstance(cfg, DictConfig)
    return cfg


def save_config(cfg: DictConfig | Mapping[str, Any], out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to a run's outputs and return its path."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    target = Path(out_dir) / name
    atomic_write_text(target, OmegaConf.to_yaml(node, resolve=True))
    return target


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """Plain-Python copy of a config (for JSON reports)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
