"""Fine-tuning of the pretrained encoder into downstream emotion heads, and their evaluation."""

from typing import Any


def load(run_dir: Any, split: int = 0, device: str = "auto", **options: Any) -> Any:
    """A `finetune.predict.Predictor` for a fine-tuning run (imported lazily: no torch at `import finetune`)."""
    from finetune.predict import load as _load

    return _load(run_dir, split=split, device=device, **options)
