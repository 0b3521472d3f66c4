"""The forecast model's configuration: one dataclass, saved as JSON, checked against
`data_schemas/forecast_config.schema.json` plus the rules JSON Schema cannot say (MONAI's
divisibility constraints). Imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import data_schemas
from mseval.errors import InputError

SHIPPED = Path(__file__).parent / "configs"
IMAGE_INPUTS = ("t1", "t2", "flair", "pd", "t1gd")
MASK_INPUTS = ("t2_lesion_mask", "gd_lesion_mask", "brain_mask")


@dataclass(frozen=True)
class ForecastConfig:
    """A treatment-conditioned diffusion model of the future NET2 mask and its training recipe.

    shape: the volume (X, Y, Z) in voxels the model sees; inputs: baseline channels concatenated with
    the noisy NET2 mask; arms: class-embedding order (class 0 = 'no arm'), None until training fills it.
    """

    name: str = "tiny"
    shape: tuple[int, int, int] = (32, 32, 32)
    inputs: tuple[str, ...] = ("t1", "t2", "flair", "pd", "t1gd", "t2_lesion_mask", "gd_lesion_mask")
    arms: tuple[str, ...] | None = None
    use_arm: bool = True
    # network (MONAI DiffusionModelUNet, 3D)
    channels: tuple[int, ...] = (16, 32, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_head_channels: int = 16
    flash_attention: bool = False  # torch's scaled_dot_product_attention (flash / memory-efficient kernels): O(tokens) memory
    activation_checkpointing: bool = False  # recompute each ResNet and attention block in the backward pass
    # diffusion
    objective: str = "ddpm"
    prediction: str = "x0"
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    target_blur_sigma: float = 0.0
    p_uncond: float = 0.1
    dice_bce_weight: float = 0.0
    fg_weight: float = 0.0  # extra MSE weight on voxels at or next to the target foreground (0 = plain MSE)
    # count pathway (forecast.count_head): NB2 head on baseline features + a network conditioned on the lesion count
    count_head: bool = False
    count_head_hidden: int = 32
    count_head_epochs: int = 3000
    # location pathway (forecast.centres): a learned intensity of lesion centres; the network renders the mask around them
    centre_map: bool = False
    centre_min_distance: int = 4  # voxels (Chebyshev) between drawn centres
    location_hidden: int = 8
    location_epochs: int = 6
    # training
    steps: int = 2000
    batch_size: int = 4
    grad_accumulation: int = 1  # micro-batches per optimizer step: batch_size = ranks x micro-batch x grad_accumulation
    lr: float = 2e-4
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    val_fraction: float = 0.2
    augment: bool = True
    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] = (0, 1, 2)  # voxel axes flipped at random; real MRI in RAS: (0,) = left-right only
    affine_prob: float = 0.3
    rotate_deg: float = 5.0
    scale: float = 0.05
    seed: int = 0
    # sampling defaults
    sample_steps: int = 50
    sampler: str = "ddim"
    guidance: float = 1.0
    clip_x0: bool = True
    count_tries: int = 1  # count_head models: draws per member until the mask holds the requested count (1 = no rejection)
    mask_threshold: float = 0.5  # a sampled voxel is lesion where (x0 + 1) / 2 exceeds this (chosen on validation by make checkpoint)

    # -- derived ---------------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        """Network input channels: the noisy mask, one per conditioning input, and the centre map (`centre_map`)."""
        return 1 + len(self.inputs) + int(self.centre_map)

    @property
    def num_classes(self) -> int:
        """Class embeddings: one per arm plus class 0, 'no arm'."""
        return 1 + len(self.arms or ())

    def arm_index(self, arm: str) -> int:
        """Class index of an arm (1-based; 0 is 'no arm')."""
        return 1 + list(self.arms or ()).index(arm)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> Path:
        from mseval.io.atomic import write_bytes_atomic

        return write_bytes_atomic(self.to_json().encode(), path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None) -> ForecastConfig:
        """Build and validate; errors name `source` and the field."""
        validate_config_dict(data, source)
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in data.items():
            if k in names:
                kw[k] = tuple(v) if isinstance(v, list) else v
        cfg = cls(**kw)
        cfg.check(source)
        return cfg

    @classmethod
    def from_json(cls, text: str, *, source: str | Path | None = None) -> ForecastConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(source, f"invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(source, "a config must be a JSON object")
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> ForecastConfig:
        """A config file, or the name of a shipped config ('tiny', 'paper')."""
        p = Path(path)
        if not p.exists() and (SHIPPED / f"{path}.json").is_file():
            p = SHIPPED / f"{path}.json"
        if not p.is_file():
            raise InputError(p, "config file not found (or name a shipped config: tiny, paper)")
        return cls.from_json(p.read_text(), source=p)

    def with_(self, **changes: Any) -> ForecastConfig:
        cfg = replace(self, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
        cfg.check()
        return cfg

    # -- rules JSON Schema cannot state -----------------------------------------------------
    def check(self, source: str | Path | None = None) -> None:
        """MONAI's constraints and cross-field rules; raises InputError naming the field."""
        levels = len(self.channels)
        if len(self.attention_levels) != levels:
            raise InputError(source, f"attention_levels has {len(self.attention_levels)} entries, channels has {levels}", field="attention_levels")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise InputError(source, f"channels {bad} not divisible by norm_num_groups={self.norm_num_groups}", field="channels")
        step = 2 ** (levels - 1)
        if any(s % step for s in self.shape):
            raise InputError(source, f"each axis of shape {list(self.shape)} must be divisible by 2^(levels-1) = {step}", field="shape")
        for c, att in zip(self.channels, self.attention_levels):
            if att and c % self.num_head_channels:
                raise InputError(source, f"channels {c} at an attention level not divisible by num_head_channels={self.num_head_channels}", field="num_head_channels")
        if self.beta_start >= self.beta_end:
            raise InputError(source, "beta_start must be below beta_end", field="beta_start")
        if self.objective == "rflow" and self.sampler != "rflow":
            raise InputError(source, "a rectified-flow model samples with sampler 'rflow'", field="sampler")
        if self.objective == "ddpm" and self.sampler == "rflow":
            raise InputError(source, "a DDPM model samples with 'ddim' or 'ddpm'", field="sampler")
        if any(a not in (0, 1, 2) for a in self.flip_axes) or len(set(self.flip_axes)) != len(self.flip_axes):
            raise InputError(source, f"flip_axes {list(self.flip_axes)}: distinct voxel axes among 0, 1, 2", field="flip_axes")
        if self.batch_size % self.grad_accumulation:
            raise InputError(source, f"batch_size {self.batch_size} is not divisible by grad_accumulation={self.grad_accumulation}", field="grad_accumulation")
        if self.count_head and not {"t2_lesion_mask", "gd_lesion_mask"} <= set(self.inputs):
            raise InputError(source, "count_head needs t2_lesion_mask and gd_lesion_mask among the inputs (its features are read from them)", field="count_head")
        if self.centre_map and not self.count_head:
            raise InputError(source, "centre_map draws as many centres as the count head draws lesions: it needs count_head", field="centre_map")
        if self.arms is not None and len(self.arms) == 0:
            raise InputError(source, "arms must not be empty", field="arms")


def validate_config_dict(data: dict[str, Any], source: str | Path | None = None) -> None:
    """Check a config object against its JSON Schema; the first error names its field."""
    import jsonschema

    schema = data_schemas.load("forecast_config")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or None
        if err.validator == "additionalProperties":
            extra = sorted(set(data) - set(schema["properties"]))
            where = extra[0] if extra else where
        raise InputError(source, f"invalid config: {err.message}", field=where)


def default_fields() -> dict[str, Any]:
    """The defaults as a JSON-able dict (what `ForecastConfig()` holds)."""
    return ForecastConfig().to_dict()


__all__ = ["ForecastConfig", "validate_config_dict", "IMAGE_INPUTS", "MASK_INPUTS", "SHIPPED", "default_fields"]
