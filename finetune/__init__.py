"""Fine-tuning of the pretrained encoder into downstream emotion heads, and their evaluation."""
