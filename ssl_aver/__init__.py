"""ssl-aver: self-supervised pretraining with audio-visual pretext tasks for emotion recognition."""

__version__ = "0.1.0"
