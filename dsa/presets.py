"""Network and training-recipe presets (DESIGN.md §8-9).

A preset is a pair of plain dataclasses: ``ModelConfig`` says what the network looks like,
``Recipe`` how it is trained.  ``paper`` is the paper's network and recipe; ``small`` and
``tiny`` are the same code with narrow layers so that the CPU demo and the tests run quickly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of the two-stream network.

    Widths are output channels.  ``global_dim`` / ``part_dim`` are the MF-Stream feature sizes
    (f_G, each f_L,i); the DSAG-Stream head widths ``dsag_conv5_g`` / ``dsag_conv5_l`` must equal
    them because the fusion adds the features element-wise.
    """

    height: int = 256
    width: int = 128
    #: ResNet-50 stem width: layer1..layer3 output 4b, 8b, 16b channels (b = 64 in ResNet-50).
    base_width: int = 64
    #: bottlenecks in layer1..layer3 of the MF trunk (ResNet-50: 3, 4, 6; ImageNet weights need those)
    trunk_blocks: tuple[int, int, int] = (3, 4, 6)
    global_dim: int = 2048          # f_G / d_G / z_G size (conv5_x output)
    part_dim: int = 256             # f_L,i / d_L,i size (1/8 of conv5_x)
    num_parts: int = 8              # merged body-part groups (dsa.parts.NUM_GROUPS)
    global_blocks: int = 3          # bottlenecks in the MF global branch (conv5_x)
    part_blocks: int = 3            # bottlenecks in each MF part branch
    last_stride: int = 1            # stride of the MF conv5_x stages (the paper removes it: 1)
    dsag_conv1: int = 32            # Table 1: conv1 5x5, per branch
    dsag_conv2: int = 64            # conv2 3x3
    dsag_conv3: int = 64            # conv3_x basic blocks (stride 2)
    dsag_conv4: int = 128           # conv4_x basic blocks (stride 2); D has num_parts * this
    dsag_conv5_g: int = 2048        # head, global branch
    dsag_conv5_l: int = 256         # head, each part branch
    dsag_blocks: int = 2            # basic blocks per DSAG stage (conv3_x, conv4_x, conv5_*)
    dsap_size: int = 32             # S: DSAP images are S x S
    classifier_dim: int = 512       # hidden width of the two-FC classifiers

    def __post_init__(self) -> None:
        if self.global_dim % 4 or self.part_dim % 4:
            raise ValueError("global_dim and part_dim must be multiples of 4 (bottleneck expansion)")
        if self.dsag_conv5_g != self.global_dim or self.dsag_conv5_l != self.part_dim:
            raise ValueError(
                f"DSAG head widths ({self.dsag_conv5_g}, {self.dsag_conv5_l}) must equal the MF feature "
                f"sizes ({self.global_dim}, {self.part_dim}) for element-wise fusion")
        if len(self.trunk_blocks) != 3 or min(self.trunk_blocks) < 1:
            raise ValueError(f"trunk_blocks must be three positive block counts, not {self.trunk_blocks}")
        if self.num_parts != 8:
            raise ValueError("num_parts is fixed at 8 by the two-level merge (dsa.parts)")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"input size {self.height}x{self.width} must be a multiple of 16")
        if self.dsap_size % 4:
            raise ValueError(f"dsap_size {self.dsap_size} must be a multiple of 4 (two stride-2 stages)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Rebuild from ``to_dict`` output; unknown keys are an error (a config from another version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}; known: {sorted(names)}")
        if "trunk_blocks" in d:                       # JSON gives a list
            d = {**d, "trunk_blocks": tuple(int(x) for x in d["trunk_blocks"])}
        return cls(**d)


@dataclass(frozen=True)
class Recipe:
    """Training recipe (paper §3.2.4 and §4.2).

    Learning rate: linear warm-up from ``lr_start`` to ``lr_peak`` over ``warmup_epochs``, then
    multiplied by ``lr_decay_gamma`` every ``lr_decay_step`` epochs (the paper: "warm up for 20
    epochs ..., then decayed by 0.5 every 40 epochs"; the trainer owns the exact milestones).
    Loss: ``w_id_mf`` x (ID on f_G + ID on the parts f_L,i, combined by ``part_id_reduction``)
    + ``w_triplet`` x (triplet on z_G + z_L) + ``w_id_fused`` x (ID on z_G + z_L).

    Switches beyond the paper (issue 14; inference stays MF-only; the defaults are the paper's recipe):
    ``w_triplet_mf`` adds a triplet on f_G / f_L beside the fused one; ``drop_d`` is the fraction of
    steps in which d is left out of the fusion (z = f, so f alone must carry the fused losses);
    ``w_distill`` weighs a similarity-preserving distillation of d into f (the batch's cosine
    similarity matrix of f pulled towards d's, d detached); ``dsag_first_epochs`` trains the
    DSAG-Stream first: in those epochs z = d and f gets only its own ID terms.
    """

    epochs: int = 320
    warmup_epochs: int = 20
    lr_start: float = 8e-6
    lr_peak: float = 8e-4
    lr_decay_step: int = 40
    lr_decay_gamma: float = 0.5
    optimizer: str = "adam"
    weight_decay: float = 5e-4
    batch_p: int = 16               # identities per batch
    batch_k: int = 4                # images per identity
    margin: float = 0.3             # batch-hard triplet margin
    w_id_mf: float = 0.5
    w_triplet: float = 1.5
    w_id_fused: float = 1.0
    part_id_reduction: str = "mean"  # how the 8 part ID terms combine: "mean" or "sum"
    label_smoothing: float = 0.1
    random_erasing: float = 0.5     # probability; 0 disables
    pad: int = 10                   # padding before the random crop
    flip: float = 0.5               # horizontal flip probability
    # beyond the paper (issue 14); 0 = off, the paper's recipe
    w_triplet_mf: float = 0.0       # triplet on f_G / f_L in the fused variants
    drop_d: float = 0.0             # fraction of steps with z = f (d dropped from the fusion)
    w_distill: float = 0.0          # similarity-preserving distillation of d (detached) into f
    dsag_first_epochs: int = 0      # first epochs: z = d, f trained by its own ID terms only

    def __post_init__(self) -> None:
        if self.part_id_reduction not in ("mean", "sum"):
            raise ValueError(f"part_id_reduction must be 'mean' or 'sum', not {self.part_id_reduction!r}")
        if not 0.0 <= self.drop_d <= 1.0:
            raise ValueError(f"drop_d is a fraction of steps in [0, 1], not {self.drop_d}")
        if self.w_triplet_mf < 0 or self.w_distill < 0 or self.dsag_first_epochs < 0:
            raise ValueError("w_triplet_mf, w_distill and dsag_first_epochs must not be negative")

    @property
    def batch_size(self) -> int:
        return self.batch_p * self.batch_k

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelConfig
    recipe: Recipe = field(default_factory=Recipe)
    description: str = ""


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "paper", ModelConfig(), Recipe(),
        "the paper's network and recipe: ResNet-50, 256x128, P16 K4, 320 epochs"),
    "small": Preset(
        "small",
        ModelConfig(height=128, width=64, base_width=16, global_dim=128, part_dim=16,
                    dsag_conv1=4, dsag_conv2=8, dsag_conv3=8, dsag_conv4=16,
                    dsag_conv5_g=128, dsag_conv5_l=16, classifier_dim=128),
        Recipe(epochs=30, warmup_epochs=3, lr_start=3.5e-5, lr_peak=3.5e-3, lr_decay_step=10,
               batch_p=8, batch_k=4),
        "CPU demo: 128x64 input, ResNet-50 layout at 1/4 width, narrow heads"),
    "tiny": Preset(
        "tiny",
        ModelConfig(height=64, width=32, base_width=4, global_dim=32, part_dim=8,
                    global_blocks=1, part_blocks=1, dsag_conv1=2, dsag_conv2=4, dsag_conv3=4,
                    dsag_conv4=4, dsag_conv5_g=32, dsag_conv5_l=8, dsag_blocks=1,
                    classifier_dim=16),
        Recipe(epochs=2, warmup_epochs=1, lr_start=1e-4, lr_peak=1e-3, lr_decay_step=1,
               batch_p=4, batch_k=2),
        "unit tests: seconds on a CPU"),
    "bench": Preset(
        "bench",
        ModelConfig(height=64, width=32, base_width=16, trunk_blocks=(1, 1, 1), global_dim=128, part_dim=16,
                    global_blocks=1, part_blocks=1, dsag_conv1=4, dsag_conv2=8, dsag_conv3=8, dsag_conv4=16,
                    dsag_conv5_g=128, dsag_conv5_l=16, dsag_blocks=1, dsap_size=16, classifier_dim=64),
        Recipe(epochs=20, warmup_epochs=2, lr_start=1e-4, lr_peak=1e-2, lr_decay_step=13,
               lr_decay_gamma=0.2, batch_p=8, batch_k=4),
        "the gain benchmark (issue 14): 64x32 input, S=16 DSAP, a shallow 1/4-width trunk (one bottleneck "
        "per stage); minutes per run on 1 CPU thread"),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a ValueError listing the presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
