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


class NET2Denoiser(nn.Module):
    """x_t: (B, 1, X, Y, Z) noisy NET2 mask in [-1, 1] (plus noise); cond: (B, C, X, Y, Z) baseline
    channels; t: (B,) timesteps (float for rectified flow); labels: (B, K+1) arm weights.
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
        emb = ArmEmbedding(old.num_embeddings, old.embedding_dim)
        emb.weight.data.copy_(old.weight.data)
        self.unet.class_embedding = emb
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
