"""Paper 1's acoustic encoder (Sec. 3.4, Fig. 2, Eq. 1), the branch every fine-tuning head loads.

z-normalise the 130-d LLD frames (statistics of the pretraining corpus, stored as buffers), embed
them linearly, add a sinusoidal positional embedding, run `n_plain_layers` transformer encoder
layers, then `n_scaled_layers` layers whose attention residual is LayerNorm(alpha*x + beta*Attn(x)),
then dropout on the output embeddings. `pool` averages the valid frames.

Choices where the paper is vague (all config): the paper's "five layers, 10 heads" is read as five
layers in total, split 3 plain + 2 scaled; alpha/beta are one learnable scalar pair per scaled layer
(`shared_scales: true` ties one pair across them), both start at 1; the feed-forward width is
4 x d_model; post-norm layers as in Vaswani et al.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_aver.errors import UserError
from ssl_aver.io import write_json
from ssl_aver.models.blocks import AttentionLayer, masked_mean, sinusoidal_positions

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "ssl_aver_encoder"


@dataclass
class EncoderConfig:
    """Sizes and regularisation of the encoder; defaults are paper 1's."""

    input_dim: int = 130
    d_model: int = 130
    n_heads: int = 10
    n_plain_layers: int = 3
    n_scaled_layers: int = 2
    ff_dim: int = 520
    residual_dropout: float = 0.1
    output_dropout: float = 0.25
    attention_dropout: float = 0.0
    attention: str = "sdpa"
    shared_scales: bool = False
    scale_init: float = 1.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"model_type"})
        if unknown:
            raise UserError(f"unknown encoder config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file is a UserError naming it."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{what} weights missing: {path}; point to a folder written by save_pretrained")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several error types for damaged files
        raise UserError(f"cannot read {what} weights {path} ({str(err).splitlines()[0]}); the file is corrupt, re-run pretraining") from None


def read_config_json(directory: Path, what: str) -> dict[str, Any]:
    """Read `directory/config.json`; missing or corrupt is a UserError naming the file."""
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise UserError(f"{what} folder not found: {directory}; pass a folder written by save_pretrained")
    if not path.is_file():
        raise UserError(f"{what} config missing: {path}; pass a folder written by save_pretrained")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"corrupt {what} config {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"corrupt {what} config {path}: expected a JSON object")
    return data


class SSLEncoder(nn.Module):
    """Acoustic transformer encoder: [B, T, 130] LLD frames -> [B, T, d_model] hidden states."""

    def __init__(self, config: EncoderConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, EncoderConfig) else EncoderConfig.from_dict(dict(config or {}))
        self.config = cfg
        self.register_buffer("feature_mean", torch.zeros(cfg.input_dim))
        self.register_buffer("feature_std", torch.ones(cfg.input_dim))
        self.embed = nn.Linear(cfg.input_dim, cfg.d_model)
        if cfg.shared_scales and cfg.n_scaled_layers:
            self.alpha = nn.Parameter(torch.full((), float(cfg.scale_init)))
            self.beta = nn.Parameter(torch.full((), float(cfg.scale_init)))
        common = dict(
            dim=cfg.d_model,
            n_heads=cfg.n_heads,
            ff_dim=cfg.ff_dim,
            residual_dropout=cfg.residual_dropout,
            attention_dropout=cfg.attention_dropout,
            impl=cfg.attention,
        )
        layers = [AttentionLayer(**common) for _ in range(cfg.n_plain_layers)]
        for _ in range(cfg.n_scaled_layers):
            layer = AttentionLayer(
                **common,
                scaled=True,
                alpha=getattr(self, "alpha", None),
                beta=getattr(self, "beta", None),
            )
            if not cfg.shared_scales:
                nn.init.constant_(layer.alpha, cfg.scale_init)
                nn.init.constant_(layer.beta, cfg.scale_init)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.output_dropout = nn.Dropout(cfg.output_dropout)

    @property
    def hidden_size(self) -> int:
        return self.config.d_model

    def set_normalization(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Store the corpus feature mean/std used to z-normalise inputs (saved with the model)."""
        self.feature_mean.copy_(torch.as_tensor(np.asarray(mean), dtype=self.feature_mean.dtype))
        self.feature_std.copy_(torch.as_tensor(np.asarray(std), dtype=self.feature_std.dtype))

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, T, D]; `padding_mask` [B, T] is True at padded frames."""
        x = (features - self.feature_mean) / self.feature_std
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = self.embed(x)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, padding_mask)
        return self.output_dropout(x)

    def pool(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over valid frames, [B, T, D] -> [B, D]."""
        return masked_mean(hidden, padding_mask)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write model.safetensors + config.json (each file atomically) and return the folder."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic(dict(self.state_dict()), out / WEIGHTS_FILE)
        write_json(out / CONFIG_FILE, {"model_type": MODEL_TYPE, **asdict(self.config)})
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SSLEncoder":
        """Load an encoder written by save_pretrained; a missing/corrupt folder is a UserError."""
        root = Path(directory)
        data = read_config_json(root, "encoder")
        if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise UserError(f"{root / CONFIG_FILE} describes a '{data.get('model_type')}' model, not an {MODEL_TYPE}")
        model = cls(EncoderConfig.from_dict(data))
        state = load_safetensors(root / WEIGHTS_FILE, "encoder")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"encoder weights {root / WEIGHTS_FILE} do not match {root / CONFIG_FILE}: {str(err).splitlines()[0]}") from None
        return model
