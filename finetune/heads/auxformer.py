"""AuxFormer (Goncalves & Busso, ICASSP 2022, "AuxFormer: Robust approach to audiovisual
emotion recognition"): a MulT-style main network plus unimodal auxiliary networks, trained
with shared losses and modality dropout (paper 2's and paper 4's baseline).

Pipeline: both modalities are projected to `d_model` by temporal Conv1d layers (see
`finetune.heads.mult.AVFrontEnd`). Main network f_av: cross-modal stacks audio <- video (audio
queries, video keys/values) and video <- audio, each followed by a self-attention stack with
gated residuals (the reference's "scalar" layers: alpha x + (1 - alpha) f(x), alpha learnable);
the two pooled outputs are concatenated -> residual FC block -> output. Auxiliary networks f_a
and f_v: a self-attention stack per modality over that modality's projected frames only, run
`aux_repeats` times in a row with the same weights, pooled -> residual FC block (d -> 512 ->
256 -> d, plus the input) -> output. The two auxiliary networks share that FC block and output
layer (`shared_aux_head`). Training loss = w_main L(f_av) + w_a L(f_a) + w_v L(f_v); modality
dropout per training batch (audio removed with probability 0.2, video 0.2, neither 0.6). The
prediction is the mean of the main and auxiliary outputs.

How the pieces depend on each other (asserted by the tests): the auxiliary networks read only
the projected frames of their modality; the main network never reads them. So the auxiliary
losses reach the auxiliary stacks and heads and, through the shared Conv1d projections, the
front end, but not the cross-modal/self stacks or the main FC block; the main loss reaches the
main network and the front end but not the auxiliary networks.

Design of the training interface: `finetune.trainer.fit` calls loss(model(batch), targets) in
training mode and `_epoch_loss` calls the same in eval mode (the dev criterion, no gradient);
`predict_outputs` writes every non-"logits" entry of a dict output as a prediction column.
Hence forward returns, in eval mode, the combined prediction [B, C] (a plain tensor: prediction
files keep only the class columns, and the dev loss is the loss of what is predicted, as in the
reference's model selection); in training mode a dict {"logits": combined, "main", "audio",
"video": the three outputs [B, C], "has_audio", "has_video": [B] presence after modality
dropout}, from which `loss` forms the weighted sum of the three terms. No custom `fit`.

Checked against ilucasgoncalves/AuxFormer (net/avmodel_AF.py, modules/transformer.py,
train.py, test.py, run_model.sh): d = 50 (`d_v`; its 50-d visual features, EMOCA per its
README, are not projected, the 1,024-d wav2vec2 features go through a kernel-1 Conv1d without
bias); 10 heads;
5 layers in every stack; attention dropout 0.1 in the self-attention and auxiliary stacks, 0 in
the cross-modal ones; relu 0.1, residual 0.1, embedding 0.25, output 0.2 dropouts; sinusoidal
positions only in the cross-modal stacks; gated ("scalar") residuals in the self-attention
stacks after the cross-modal ones, alpha ~ U(0, 1); each auxiliary stack applied three times
with tied weights; auxiliary FC block 50 -> 512 -> 256 -> 50 with a residual, shared by the
audio and video auxiliary networks together with their output layer; main FC block 100 -> 100
-> 100 with a residual; loss weights 0.3333 each; modality dropout p_audio = p_video = 0.2 drawn
once per batch; prediction = (main + audio aux + video aux) / 3 in training, dev and test.
Training (for the recipe, not `model:` keys): Adam, lr 7.25e-4, batch 32, 30 epochs, the model
with the lowest dev loss kept (its `--clip 0.8` is parsed but never applied).

What the reference does that this head deliberately does not copy: [T, B, D] tensors without
key padding masks (padded frames attended; the read-out is the last padded step); a causal mask
rebuilt in every layer from the padded batch lengths (outputs depend on batch companions); a
frozen wav2vec2 recomputed at every step (here: stored features or the toolkit's encoder);
modality dropout also on the dev set (random model selection); modality dropout by zeroing the
raw waveform, whose wav2vec2 features are not zero (here the modality is zeroed AND its mask
cleared, `ssl_aver.masking.drop_frames`, the same operation as the test-time missing-modality
conditions); a mixed-precision scaler.

Choices where the source is vague (all `model:` keys):
- `pooling`: "mean" over the valid frames (default) or the "last" valid frame (the reference's
  read-out, made padding-safe); mean for the reasons given in `finetune.heads.mult`.
- No causal mask (bidirectional attention within the clip). The reference's auxiliary stacks
  have no positional embedding but got frame order from that causal mask; without it they would
  be order-blind, so `aux_positions` = true adds the sinusoidal positions there (false: the
  reference's input).
- `combine`: "present" (default) = mean of the main output and the auxiliary outputs of the
  modalities the clip has (an auxiliary network without any frame of its modality outputs a
  constant); "all" = the reference's mean of all three in every condition.
- The auxiliary loss of a modality counts only the clips that have it (the reference computes
  it on zeroed inputs too); a batch without that modality adds nothing for it.
- The visual frames are projected too (1,408-d EfficientNet-B2 features here); `proj_kernel` = 1.
- Regression uses 1 - CCC per term (paper 2's objective), computed per batch.
- `shared_embeddings` (paper 2 Fig. 2 analysis): see its docstring.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads import BuildContext, check_choice
from finetune.heads.mult import POOLINGS, AVFrontEnd, ResidualMLP, TransformerStack, pool
from finetune.heads.vavl import ccc_loss, encoder_branch, valid_mean
from ssl_aver.errors import UserError
from ssl_aver.masking import drop_frames

COMBINES = ("present", "all")
TERMS = ("main", "audio", "video")


class AuxFormerHead(nn.Module):
    """AuxFormer: cross-modal main network + unimodal auxiliary networks, shared losses."""

    inputs = ("audio", "video")
    require = "both"
    eval_modalities = ("av", "audio", "video")
    tasks = ("multiclass", "multilabel", "regression")

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        self.n_out = n_classes
        self.objective = "ccc" if ctx.task == "regression" else ("bce" if ctx.task == "multilabel" else "ce")
        self.pooling = check_choice(cfg, "pooling", POOLINGS)
        self.combine_mode = check_choice(cfg, "combine", COMBINES)
        self.drop_audio, self.drop_video = float(cfg["modality_dropout"]["audio"]), float(cfg["modality_dropout"]["video"])
        if self.drop_audio < 0 or self.drop_video < 0 or self.drop_audio + self.drop_video > 1:
            raise UserError(f"model.modality_dropout audio={self.drop_audio} video={self.drop_video}: each >= 0 and their sum <= 1")
        weights = dict(cfg["loss_weights"])
        if sorted(weights) != sorted(TERMS) or any(float(w) < 0 for w in weights.values()):
            raise UserError(f"model.loss_weights needs non-negative weights for exactly {list(TERMS)}, got {weights}")
        self.loss_weights = {k: float(weights[k]) for k in TERMS}
        self.aux_repeats = int(cfg["aux_repeats"])
        if self.aux_repeats < 1:
            raise UserError(f"model.aux_repeats must be >= 1, got {self.aux_repeats}")
        d, heads, layers = int(cfg["d_model"]), int(cfg["n_heads"]), int(cfg["layers"])
        self.front = AVFrontEnd(ctx, d, int(cfg["proj_kernel"]), "AuxFormer")
        common = dict(relu_dropout=float(cfg["relu_dropout"]), res_dropout=float(cfg["res_dropout"]), embed_dropout=float(cfg["embed_dropout"]))
        attn, cross_attn = float(cfg["attn_dropout"]), float(cfg["cross_attn_dropout"])
        self.audio_from_video = TransformerStack(d, heads, layers, attn_dropout=cross_attn, positions=True, **common)
        self.video_from_audio = TransformerStack(d, heads, layers, attn_dropout=cross_attn, positions=True, **common)
        self.audio_self = TransformerStack(d, heads, layers, attn_dropout=attn, positions=False, gated=True, **common)
        self.video_self = TransformerStack(d, heads, layers, attn_dropout=attn, positions=False, gated=True, **common)
        self.fusion = ResidualMLP(2 * d, [2 * d], float(cfg["out_dropout"]))
        self.out_layer = nn.Linear(2 * d, n_classes)
        aux_positions = bool(cfg["aux_positions"])
        self.audio_aux = TransformerStack(d, heads, layers, attn_dropout=attn, positions=aux_positions, **common)
        self.video_aux = TransformerStack(d, heads, layers, attn_dropout=attn, positions=aux_positions, **common)
        hidden = [int(h) for h in cfg["aux_hidden"]]
        self.audio_aux_head = nn.Sequential(ResidualMLP(d, hidden, float(cfg["out_dropout"])), nn.Linear(d, n_classes))
        # registered once when shared: a module under two names would be saved twice (safetensors refuses shared tensors)
        self.video_aux_head = None if cfg["shared_aux_head"] else nn.Sequential(ResidualMLP(d, hidden, float(cfg["out_dropout"])), nn.Linear(d, n_classes))

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys: the reference code's sizes (ilucasgoncalves/AuxFormer net/avmodel_AF.py, train.py)."""
        return {
            "d_model": 50, "n_heads": 10, "layers": 5, "proj_kernel": 1,
            "attn_dropout": 0.1, "cross_attn_dropout": 0.0, "relu_dropout": 0.1, "res_dropout": 0.1, "embed_dropout": 0.25,
            "out_dropout": 0.2, "aux_hidden": [512, 256], "aux_repeats": 3, "aux_positions": True, "shared_aux_head": True,
            "pooling": "mean", "combine": "present", "modality_dropout": {"audio": 0.2, "video": 0.2},
            "loss_weights": {"main": 0.3333, "audio": 0.3333, "video": 0.3333},
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "AuxFormerHead":
        return cls(cfg, n_classes, ctx)

    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        return encoder_branch(self.front.acoustic)

    def train(self, mode: bool = True) -> "AuxFormerHead":
        """Train mode, except a frozen acoustic encoder stays in eval mode."""
        super().train(mode)
        self.front.keep_frozen_encoder_in_eval()
        return self

    def _modality_dropout(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """One draw per batch: remove (zero + mask) all audio, all video, or nothing."""
        u = float(torch.rand(()))
        if u < self.drop_audio:
            return drop_frames(batch, "audio")
        if u < self.drop_audio + self.drop_video:
            return drop_frames(batch, "video")
        return batch

    def _aux_head(self, modality: str) -> nn.Module:
        return self.audio_aux_head if modality == "audio" or self.video_aux_head is None else self.video_aux_head

    def _auxiliary(self, modality: str, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        stack = self.audio_aux if modality == "audio" else self.video_aux
        for _ in range(self.aux_repeats):
            x = stack(x, valid)
        return self._aux_head(modality)(pool(x, valid, self.pooling))

    def branches(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The main and both auxiliary outputs [B, C] and the presence of each modality [B]."""
        a, a_valid, v, v_valid = self.front(batch)
        h_a = self.audio_self(self.audio_from_video(a, a_valid, v, v_valid), a_valid)
        h_v = self.video_self(self.video_from_audio(v, v_valid, a, a_valid), v_valid)
        fused = torch.cat([pool(h_a, a_valid, self.pooling), pool(h_v, v_valid, self.pooling)], dim=-1)
        return {
            "main": self.out_layer(self.fusion(fused)), "audio": self._auxiliary("audio", a, a_valid), "video": self._auxiliary("video", v, v_valid),
            "has_audio": a_valid.any(dim=1), "has_video": v_valid.any(dim=1),
        }

    def combine(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The prediction: mean of the main and auxiliary outputs ("present": only the auxiliary
        outputs of modalities the clip has)."""
        if self.combine_mode == "all":
            return (outputs["main"] + outputs["audio"] + outputs["video"]) / 3
        wa, wv = (outputs[f"has_{m}"].to(outputs["main"].dtype)[:, None] for m in ("audio", "video"))
        return (outputs["main"] + wa * outputs["audio"] + wv * outputs["video"]) / (1 + wa + wv)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor | dict[str, torch.Tensor]:
        """Eval: the prediction [B, C]. Training: modality dropout, then a dict with the prediction
        ("logits"), the three outputs and the presence masks, for `loss` (module docstring)."""
        if not self.training:
            return self.combine(self.branches(batch))
        outputs = self.branches(self._modality_dropout(batch))
        return {"logits": self.combine(outputs), **outputs}

    def _criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets[:, : self.n_out]
        if self.objective == "ccc":
            return ccc_loss(logits, y)
        if self.objective == "bce":
            return F.binary_cross_entropy_with_logits(logits, y)
        return F.cross_entropy(logits, y.argmax(dim=1))

    def loss_terms(self, outputs: Mapping[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted losses of the main network (all clips) and of each auxiliary network (the
        clips that have its modality; zero when none does)."""
        terms = {"main": self._criterion(outputs["main"], targets)}
        for modality in ("audio", "video"):
            rows = outputs[f"has_{modality}"]
            terms[modality] = self._criterion(outputs[modality][rows], targets[rows]) if rows.any() else outputs[modality].new_zeros(())
        return terms

    def loss(self, outputs: torch.Tensor | Mapping[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Training (dict): the weighted sum of the main and auxiliary losses. Eval (tensor, the
        dev criterion): CE / BCE / 1 - CCC of the prediction on the primary targets."""
        if isinstance(outputs, Mapping):
            terms = self.loss_terms(outputs, targets)
            return sum(self.loss_weights[k] * terms[k] for k in TERMS)
        return self._criterion(outputs, targets)

    def shared_embeddings(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Average-pooled outputs of the cross-modal stacks (audio <- video, video <- audio) of the paired clips.

        Paper 2 Fig. 2 takes AuxFormer's cross-modal layers as its "shared layers". For the clips
        with both modalities: the audio embedding is the audio <- video stack's output (final
        LayerNorm included, before the self-attention stack), the video embedding the video <-
        audio stack's output, each averaged over its own valid frames -> [N, d] each."""
        a, a_valid, v, v_valid = self.front(batch)
        both = a_valid.any(dim=1) & v_valid.any(dim=1)
        a, a_valid, v, v_valid = a[both], a_valid[both], v[both], v_valid[both]
        audio = valid_mean(self.audio_from_video(a, a_valid, v, v_valid), a_valid)
        video = valid_mean(self.video_from_audio(v, v_valid, a, a_valid), v_valid)
        return audio, video
