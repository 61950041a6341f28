"""`train.mixed_precision` (bf16 autocast) and `train.grad_accum` train every registered head on
the CPU; accumulation over N batches equals one step on their concatenation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from finetune.heads import HEADS, BuildContext, head_class
from finetune.run import default_loss
from finetune.trainer import TrainSettings, fit
from ssl_aver.app.bench import BenchSettings, synthetic_head_batches, target_layout
from ssl_aver.errors import UserError
from ssl_aver.models.encoder import EncoderConfig, SSLEncoder

ROOT = Path(__file__).resolve().parents[2]


def tiny_model(name: str) -> dict:
    """The head's defaults with the tiny sizes of its demo recipe (a system of recipes/compare/demo.yaml,
    or recipes/finetune/<head>_demo.yaml)."""
    cfg = head_class(name).defaults()
    systems = yaml.safe_load((ROOT / "recipes/compare/demo.yaml").read_text())["systems"]
    for system in systems:
        if system["head"] == name:
            for item in system["overrides"]:
                key, _, value = item.partition("=")
                cfg[key.removeprefix("model.")] = yaml.safe_load(value)
            return cfg
    recipe = {"two_stage_audio": "two_stage", "two_stage_video": "two_stage"}.get(name, name)
    path = ROOT / f"recipes/finetune/{recipe}_demo.yaml"
    if path.is_file():
        model = yaml.safe_load(path.read_text()).get("model", {})
        cfg.update({k: v for k, v in model.items() if k in cfg})
    return cfg


class Loader(list):
    """Batches with the `dataset.rows` some heads read training class counts from."""

    def __init__(self, batches: list) -> None:
        super().__init__(batches)
        self.dataset = SimpleNamespace(rows=[(c, t.numpy()) for b in batches for c, t in zip(b["clips"], b["targets"])])


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder")
    SSLEncoder(EncoderConfig(d_model=16, n_heads=2, n_plain_layers=1, n_scaled_layers=1, ff_dim=32)).save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_bf16_trains_every_head_on_cpu(name, encoder_dir):
    torch.manual_seed(0)
    settings = BenchSettings(head_batch=4, clip_seconds=0.6, video_dim=12)
    cls = head_class(name)
    ctx = BuildContext(n_classes=6, task="multiclass", encoder_dir=encoder_dir, audio_shape=(130,), video_shape=(12,),
                       class_counts=np.full(6, 10), extra={"target_layout": target_layout(6)})
    cfg = tiny_model(name)
    if name == "mer":
        cfg["audio_groups"] = None  # the demo splits LLD columns; here the acoustic input is an encoder
    model = cls.from_config(cfg, 6, ctx)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    train = Loader(synthetic_head_batches(settings, 3, "cpu", 0))
    dev = Loader(synthetic_head_batches(settings, 1, "cpu", 1))
    loss_fn = getattr(model, "loss", None) or default_loss("multiclass", 6)
    trainer = getattr(model, "fit", None) or (lambda *a, **kw: fit(model, *a, **kw))
    result = trainer(train, dev, loss_fn=loss_fn, settings=TrainSettings(epochs=2, lr=1e-3, batch_size=4, mixed_precision="bf16"),
                     device=torch.device("cpu"), progress=False)
    assert result.history and all(math.isfinite(h["train_loss"]) for h in result.history)
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed, f"{name}: bf16 training changed no weight"
    assert all(v.dtype == before[k].dtype for k, v in model.state_dict().items() if k in before)  # weights stay float32


def test_autocast_really_runs_in_bf16():
    seen = []
    model = torch.nn.Linear(4, 6)
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    batch = {"x": torch.randn(8, 4), "targets": torch.eye(6)[torch.arange(8) % 6], "clips": [str(i) for i in range(8)]}

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, b):
            return self.inner(b["x"])

    fit(Wrap(), [batch], [batch], loss_fn=default_loss("multiclass", 6), settings=TrainSettings(epochs=1, mixed_precision="bf16"),
        device=torch.device("cpu"), progress=False)
    assert seen[0] == torch.bfloat16 and seen[-1] == torch.float32  # training forward in bf16, dev evaluation in float32


def test_grad_accum_equals_one_step_on_the_concatenated_batches():
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.eye(3)[torch.arange(8) % 3]
    halves = [{"x": x[:4], "targets": y[:4], "clips": list("abcd")}, {"x": x[4:], "targets": y[4:], "clips": list("efgh")}]
    whole = [{"x": x, "targets": y, "clips": list("abcdefgh")}]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(5, 3)

        def forward(self, b):
            return self.lin(b["x"])

    torch.manual_seed(1)
    a = Net()
    b = Net()
    b.load_state_dict(a.state_dict())
    base = TrainSettings(epochs=1, lr=0.1, optimizer="adam", lr_patience=None, early_stop_patience=None)
    loss = default_loss("multiclass", 3)
    ra = fit(a, halves, whole, loss_fn=loss, settings=dataclasses.replace(base, grad_accum=2), device=torch.device("cpu"), progress=False)
    fit(b, whole, whole, loss_fn=loss, settings=base, device=torch.device("cpu"), progress=False)
    assert ra.history[0]["steps"] == 1
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_bad_precision_and_accumulation_name_themselves():
    with pytest.raises(UserError, match="train.mixed_precision must be one of"):
        TrainSettings(mixed_precision="fp8")
    with pytest.raises(UserError, match="train.grad_accum must be >= 1"):
        TrainSettings(grad_accum=0)
