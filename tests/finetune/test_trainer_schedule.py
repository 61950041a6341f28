"""The shared fine-tuning schedule: plateau decay before early stopping, step-bounded runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune.trainer import TrainSettings, fit
from ssl_aver.errors import UserError


class _Counting(nn.Module):
    """A linear head that counts its training-mode forward passes (= optimizer steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)
        self.train_calls = 0

    def forward(self, batch: dict) -> torch.Tensor:
        self.train_calls += int(self.training)
        return self.linear(batch["x"])


def _loader(n_batches: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(4, 2, generator=g), "targets": torch.eye(3)[torch.arange(4) % 3], "clips": list("abcd")} for _ in range(n_batches)]


def _flat_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A dev loss that never improves after the first epoch (a plateau from epoch 2 on)."""
    return (logits * 0).sum() + 1.0


def test_rate_decays_after_lr_patience_stale_epochs_and_before_early_stopping():
    model = _Counting()
    settings = TrainSettings(epochs=40, lr=1e-2, lr_patience=5, lr_factor=0.1, early_stop_patience=10)
    result = fit(model, _loader(2), _loader(1), loss_fn=_flat_loss, settings=settings, device=torch.device("cpu"), progress=False)
    lrs = [round(h["lr"], 12) for h in result.history]
    # epoch 1 sets the best; epochs 2-6 are stale 1-5: the decay fires after the 5th stale epoch,
    # epochs 7-11 train at 1e-3, and early stopping ends the run after the 10th stale epoch
    assert lrs == [1e-2] * 6 + [1e-3] * 5
    assert result.best_epoch == 1 and len(result.history) == 11


def test_paper1_defaults_let_the_decay_fire():
    settings = TrainSettings()
    assert settings.lr_patience == 5 and settings.lr_factor == 0.1
    assert settings.early_stop_patience > settings.lr_patience


@pytest.mark.parametrize("early", [3, 5])
def test_early_stopping_that_would_preempt_the_decay_is_refused(early):
    with pytest.raises(UserError, match="early_stop_patience"):
        TrainSettings(lr_patience=5, early_stop_patience=early)


def test_null_patience_turns_decay_and_early_stopping_off():
    model = _Counting()
    settings = TrainSettings(epochs=8, lr=1e-2, lr_patience=None, early_stop_patience=None)
    result = fit(model, _loader(1), _loader(1), loss_fn=_flat_loss, settings=settings, device=torch.device("cpu"), progress=False)
    assert [h["lr"] for h in result.history] == [1e-2] * 8


def test_max_steps_bounds_the_run_in_optimizer_steps_not_epochs():
    model = _Counting()
    settings = TrainSettings(epochs=1, lr=1e-2, max_steps=10, lr_patience=None, early_stop_patience=None)
    loss = lambda logits, targets: nn.functional.cross_entropy(logits, targets.argmax(1))  # noqa: E731
    result = fit(model, _loader(4), _loader(1), loss_fn=loss, settings=settings, device=torch.device("cpu"), progress=False)
    assert model.train_calls == 10
    assert [h["steps"] for h in result.history] == [4, 8, 10]
