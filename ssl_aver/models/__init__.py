"""Model blocks shared by pretraining and fine-tuning: paper 1's acoustic encoder and its parts."""

from ssl_aver.models.blocks import MLPHead, SelfAttention, masked_mean, sinusoidal_positions
from ssl_aver.models.encoder import EncoderConfig, SSLEncoder

__all__ = ["EncoderConfig", "MLPHead", "SSLEncoder", "SelfAttention", "masked_mean", "sinusoidal_positions"]
