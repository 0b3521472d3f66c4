"""The denoiser: MONAI's 3D `DiffusionModelUNet` with the baseline images and lesion masks
concatenated channel-wise with the noisy NET2 mask, and the treatment arm as a learned class
embedding (class 0 = 'no arm', used for classifier-free guidance).

The arm enters as a weight vector over classes, (B, K+1): a one-hot row is an ordinary arm, a
row mixing two arms is a blended treatment (efficacy sweep). A one-hot row times the embedding
table is exactly the table's row, so both paths give identical numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from forecast.config import ForecastConfig


class ArmEmbedding(nn.Embedding):
    """`nn.Embedding` that also takes soft labels: (B, K+1) float weights -> weights @ table."""

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if labels.is_floating_point():
            return labels.to(self.weight.dtype) @ self.weight
        return super().forward(labels)


class ConditionEmbedding(nn.Module):
    """The class embedding of a count-conditioned model: labels (B, K+3) = arm weights (K+1), a flag
    'count given' (0/1) and the count n; returns arm weights @ table + flag x MLP(one-hot min(n, 16),
    log(1 + n)), shape (B, dim). Labels of width K+1 (no count columns) mean 'no count given'.
    The null row of classifier-free guidance (class 0, zeros elsewhere) drops the arm and the count."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        from forecast.count_head import MAX_ONEHOT

        self.num_classes = num_classes
        self.arm = ArmEmbedding(num_classes, dim)
        self.count = nn.Sequential(nn.Linear(MAX_ONEHOT + 2, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        from forecast.count_head import MAX_ONEHOT

        k = self.num_classes
        emb = self.arm(labels[:, :k].float())
        if labels.shape[1] < k + 2:
            return emb
        given = labels[:, k: k + 1].float()
        n = labels[:, k + 1].float().clamp_min(0)
        feats = torch.cat([nn.functional.one_hot(n.round().long().clamp_max(MAX_ONEHOT), MAX_ONEHOT + 1).float(),
                           torch.log1p(n)[:, None]], dim=1)
        return emb + given * self.count(feats.to(emb.dtype))


def count_labels(arm_w: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
    """(B, K+3) labels of a count-conditioned model: arm weights (B, K+1), then [1, n] per row
    (counts (B,)), or [0, 0] (no count) when counts is None."""
    extra = torch.zeros(arm_w.shape[0], 2, device=arm_w.device, dtype=arm_w.dtype)
    if counts is not None:
        extra[:, 0] = 1.0
        extra[:, 1] = counts.to(arm_w.device, arm_w.dtype)
    return torch.cat([arm_w, extra], dim=1)


class NET2Denoiser(nn.Module):
    """x_t: (B, 1, X, Y, Z) noisy NET2 mask in [-1, 1] (plus noise); cond: (B, C, X, Y, Z) baseline
    channels (then the lesion-centre map, with `centre_map`; `location` is then the centre intensity); t: (B,) timesteps (float for rectified flow); labels: (B, K+1) arm weights.
    Returns (B, 1, X, Y, Z): the configured prediction (epsilon, v, x0, or flow velocity)."""

    def __init__(self, cfg: ForecastConfig) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        if cfg.arms is None:
            raise ValueError("config has no arms; training fills them from the cohort")
        self.cfg = cfg
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=cfg.in_channels,
            out_channels=1,
            num_res_blocks=cfg.num_res_blocks,
            channels=tuple(cfg.channels),
            attention_levels=tuple(cfg.attention_levels),
            norm_num_groups=cfg.norm_num_groups,
            num_head_channels=cfg.num_head_channels,
            num_class_embeds=cfg.num_classes,
            use_flash_attention=cfg.flash_attention,
        )
        old = self.unet.class_embedding
        if cfg.count_head:
            from forecast.count_head import CountHead

            cemb = ConditionEmbedding(old.num_embeddings, old.embedding_dim)
            cemb.arm.weight.data.copy_(old.weight.data)
            self.unet.class_embedding = cemb
            self.count_head: CountHead | None = CountHead(cfg.num_classes, cfg.count_head_hidden)
            for prm in self.count_head.parameters():  # fitted on its own (forecast.count_head.fit_count_head)
                prm.requires_grad_(False)
        else:
            emb = ArmEmbedding(old.num_embeddings, old.embedding_dim)
            emb.weight.data.copy_(old.weight.data)
            self.unet.class_embedding = emb
            self.count_head = None
        self.location = None
        if cfg.centre_map:
            from forecast.centres import LocationNet

            self.location = LocationNet(len(cfg.inputs), cfg.location_hidden)
            for prm in self.location.parameters():  # fitted on its own (forecast.centres.fit_location)
                prm.requires_grad_(False)
        if cfg.activation_checkpointing:
            checkpoint_blocks(self.unet)

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if cond.shape[1] != self.cfg.in_channels - 1:
            raise ValueError(f"expected {self.cfg.in_channels - 1} condition channels, got {cond.shape[1]}")
        x = torch.cat([x_t, cond.to(x_t.dtype)], dim=1)
        return self.unet(x, timesteps=t, class_labels=labels)


def checkpoint_blocks(unet: nn.Module) -> int:
    """Gradient (activation) checkpointing: every ResNet block and spatial attention block of a MONAI
    `DiffusionModelUNet` keeps only its inputs in a training forward pass and runs again in the
    backward pass (torch.utils.checkpoint, non-reentrant). Inference and `no_grad` calls are
    unchanged. The state dict is unchanged. Returns the number of wrapped blocks."""
    from monai.networks.blocks.spatialattention import SpatialAttentionBlock
    from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

    n = 0
    for mod in unet.modules():
        if isinstance(mod, (DiffusionUNetResnetBlock, SpatialAttentionBlock)):
            mod.forward = _checkpointed(mod, mod.forward)  # type: ignore[method-assign]
            n += 1
    return n


def _checkpointed(mod: nn.Module, forward):  # noqa: ANN001, ANN202 - wraps any block forward
    from torch.utils.checkpoint import checkpoint

    def run(*args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        if mod.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def arm_weights(cfg: ForecastConfig, arms: Sequence[str | None], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, K+1) one-hot class weights for each arm name (None = 'no arm')."""
    w = torch.zeros(len(arms), cfg.num_classes, device=device)
    for i, a in enumerate(arms):
        w[i, 0 if a is None or not cfg.use_arm else cfg.arm_index(a)] = 1.0
    return w


def blend_weights(cfg: ForecastConfig, arm_a: str, arm_b: str, fraction: float) -> torch.Tensor:
    """(K+1,) weights of a blend: (1 - fraction) x arm_a + fraction x arm_b."""
    w = torch.zeros(cfg.num_classes)
    w[cfg.arm_index(arm_a)] += 1.0 - fraction
    w[cfg.arm_index(arm_b)] += fraction
    return w


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
