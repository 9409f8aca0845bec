"""The training configuration: one typed tree, from a config file, then ``--set`` overrides.

The tree (:class:`TrainConfig`) has four parts: what is trained on (:class:`DataConfig`), the network
(:class:`ModelConfig`), how it is trained (:class:`Recipe`), and a few run-level fields (variant,
pretrained weights, seed).  It is filled, in this order, from

1. a config file (YAML), which may name a base file to inherit from (``_base_: paper``): the presets
   shipped in ``dsa/configs/*.yaml`` are such files, and a user's own file usually starts from one;
2. ``--set section.field=value`` overrides (and the CLI options that are aliases of them).

Every field declares its type and range beside its default (:func:`dsa.params.param`, the one
validation layer, which the environment variables use too); constructing a tree checks every field
before any work starts, and every problem is one sentence naming the field, the value and what is
allowed (:class:`ConfigError`).  ``config.json`` of a run stores the resolved tree
(:meth:`TrainConfig.to_dict`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .params import NAME_PATTERN, SPEC_PATTERN, ConfigError, check_fields, convert, param
from .registry import Registry

__all__ = ["ConfigError", "PresetError", "NAME_PATTERN", "param", "convert", "TrainConfig", "DataConfig", "ModelConfig",
           "Recipe", "load_config", "get_preset", "preset_names", "parse_overrides", "apply_overrides",
           "override_keys", "resolve_config", "dump_yaml", "BACKBONES", "VARIANTS", "MIN_FOUND"]

#: alias kept for code that caught the earlier name
PresetError = ConfigError

#: MF-Stream backbones: name -> builder ``(cfg, use_global, pretrained) -> dsa.mf_stream.Backbone``
BACKBONES: Registry = Registry("backbone", {
    "resnet50": "dsa.backbone:build_resnet50",
    "mobilenet_v2": "dsa.mobilenet:build_mobilenet_v2",
})

#: network variants (paper Tables 3-5): name -> (global branch, part branches, DSAG-Stream, concat fusion)
VARIANTS: dict[str, tuple[bool, bool, bool, bool]] = {
    "dsa": (True, True, True, False),
    "dsa-concat": (True, True, True, True),
    "dsa-global": (True, False, True, False),
    "dsa-local": (False, True, True, False),
    "two-branch": (True, True, False, False),
    "baseline": (True, False, False, False),
}

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: the least share of a DSAP store's images with a person found that training accepts by default
#: (``data.min_found``; ``precompute run --min-found`` states the same share): a store below it was almost
#: always computed with the wrong estimator for its images
MIN_FOUND = 0.5


# --------------------------------------------------------------------------------------------------
# the tree


@dataclass(frozen=True)
class DataConfig:
    """What a run trains on: one dataset, or the union of several (a list).

    A union is a list of dataset specs (``dataset: [market1501, cuhk03-labeled]`` in a file; the data
    layer also reads ``a+b``, see ``data.datasets.union``).  ``estimator`` and ``tag`` are one value for
    every dataset or a list with one entry per dataset (``a+b`` on the command line); a list whose
    entries are all equal is kept as the one value, so the two spellings are the same configuration.
    """

    dataset: str | tuple[str, ...] = param("synthetic", "dataset spec (a registered name with options, "
                                           "name:key=value,...), or a list of them: the union of their training splits",
                                           pattern=SPEC_PATTERN)
    estimator: str | tuple[str, ...] = param("synthetic", "the estimator whose DSAP store to read (one, or one per dataset)",
                                             pattern=NAME_PATTERN)
    tag: str | None | tuple[str | None, ...] = param(None, "store variant: ROOT/dsap/<dataset>/<estimator>-<tag> "
                                                     "(one, or one per dataset)", pattern=NAME_PATTERN)
    input: str = param("dsap", "DSAG-Stream input: dsap (dense) or csa (coarse, Table 4)", choices=("dsap", "csa"))
    balance: str = param("none", "P x K batches of a union: none (every identity equally likely, so each dataset "
                         "in proportion to its identities) or datasets (an equal share of each dataset's identities "
                         "in every batch)", choices=("none", "datasets"))
    min_found: float = param(MIN_FOUND, "the least share of the store's images with a person found (a store below "
                             "it was most likely computed with the wrong estimator; 0 accepts any)", ge=0.0, le=1.0)

    def __post_init__(self) -> None:
        check_fields(self, "data")
        specs = self.dataset if isinstance(self.dataset, (tuple, list)) else (self.dataset,)
        specs = tuple(str(s).strip() for s in specs)
        if not specs or not all(specs):
            raise ConfigError("data.dataset must name a dataset")
        twice = sorted({s for s in specs if specs.count(s) > 1})
        if twice:
            raise ConfigError(f"data.dataset names {', '.join(twice)} more than once; a union lists each dataset once")
        object.__setattr__(self, "dataset", specs if len(specs) > 1 else specs[0])
        for name in ("estimator", "tag"):
            object.__setattr__(self, name, self._per_dataset(name, getattr(self, name), len(specs)))
        estimators = self.estimator if isinstance(self.estimator, tuple) else (self.estimator,)
        if not all(e and e.strip() for e in estimators):
            raise ConfigError("data.estimator must name an estimator")

    def _per_dataset(self, name: str, value: Any, n: int) -> Any:
        """``value`` as one value (the same for every dataset) or a tuple of one per dataset; a ``+``-joined
        string is a per-dataset list when the dataset is a union."""
        if isinstance(value, str) and n > 1 and "+" in value:
            value = tuple(value.split("+"))
        if not isinstance(value, (tuple, list)):
            return value
        values = tuple(None if name == "tag" and (v is None or str(v).strip().lower() in ("none", "null", ""))
                       else str(v).strip() for v in value)
        if len(set(values)) == 1:
            return values[0]
        if n > 1 and len(values) != n:  # one dataset spec may still be an unsplit union (the data layer splits it)
            raise ConfigError(f"data.{name} gives {len(values)} values ({', '.join(map(str, values))}) for the "
                              f"{n} datasets of data.dataset; give one for all, or one per dataset")
        return values

    @property
    def datasets(self) -> tuple[str, ...]:
        """The dataset specs (one for a single dataset)."""
        return self.dataset if isinstance(self.dataset, tuple) else (self.dataset,)

    @property
    def is_union(self) -> bool:
        return len(self.datasets) > 1

    def _each(self, value: Any) -> tuple[Any, ...]:
        n = len(self.datasets)
        if isinstance(value, tuple):
            if len(value) != n:
                raise ConfigError(f"data.dataset names {n} dataset(s) but data.estimator / data.tag give "
                                  f"{len(value)} values; give one for all, or one per dataset")
            return value
        return (value,) * n

    @property
    def estimators(self) -> tuple[str, ...]:
        """The estimator of each dataset."""
        return self._each(self.estimator)

    @property
    def tags(self) -> tuple[str | None, ...]:
        """The store tag of each dataset."""
        return self._each(self.tag)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native values: a union's specs (and per-dataset estimators or tags) as lists."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of the two-stream network (docs/DESIGN.md §6).

    Widths are output channels.  ``global_dim`` / ``part_dim`` are the MF-Stream feature sizes (f_G,
    each f_L,i); the DSAG-Stream head widths ``dsag_conv5_g`` / ``dsag_conv5_l`` must equal them
    because the fusion adds the features element-wise.
    """

    height: int = param(256, "input height", ge=16, le=2048, multiple_of=16)
    width: int = param(128, "input width", ge=16, le=2048, multiple_of=16)
    base_width: int = param(64, "ResNet stem width b: layer1..layer3 output 4b, 8b, 16b channels", ge=1, le=1024)
    trunk_blocks: tuple[int, int, int] = param((3, 4, 6), "bottlenecks in layer1..layer3 of the ResNet trunk",
                                               ge=1, le=64)
    global_dim: int = param(2048, "f_G / d_G / z_G size", ge=4, le=65536, multiple_of=4)
    part_dim: int = param(256, "each f_L,i / d_L,i size", ge=4, le=65536, multiple_of=4)
    num_parts: int = param(8, "merged body-part groups (fixed by the two-level merge)", choices=(8,))
    global_blocks: int = param(3, "bottlenecks in the MF global branch (conv5_x)", ge=1, le=64)
    part_blocks: int = param(3, "bottlenecks in each MF part branch", ge=1, le=64)
    last_stride: int = param(1, "stride of the MF conv5_x stages (the paper removes it: 1)", choices=(1, 2))
    dsag_conv1: int = param(32, "DSAG conv1 5x5 width per branch (Table 1)", ge=1, le=4096)
    dsag_conv2: int = param(64, "DSAG conv2 3x3 width", ge=1, le=4096)
    dsag_conv3: int = param(64, "DSAG conv3_x width (stride 2)", ge=1, le=4096)
    dsag_conv4: int = param(128, "DSAG conv4_x width (stride 2)", ge=1, le=4096)
    dsag_conv5_g: int = param(2048, "DSAG head width, global branch (= global_dim)", ge=4, le=65536)
    dsag_conv5_l: int = param(256, "DSAG head width, each part branch (= part_dim)", ge=4, le=65536)
    dsag_blocks: int = param(2, "basic blocks per DSAG stage", ge=1, le=64)
    dsap_size: int = param(32, "S: DSAP images are S x S", ge=4, le=256, multiple_of=4)
    classifier_dim: int = param(512, "hidden width of the two-FC classifiers", ge=1, le=65536)
    backbone: str = param("resnet50", "MF-Stream backbone (registry dsa.config.BACKBONES)",
                          choices=BACKBONES.known_names)
    frozen_blocks: int = param(0, "mobilenet_v2: the first N backbone blocks stay fixed", ge=0, le=14)

    def __post_init__(self) -> None:
        if isinstance(self.trunk_blocks, list):
            object.__setattr__(self, "trunk_blocks", tuple(self.trunk_blocks))
        check_fields(self, "model")
        if len(self.trunk_blocks) != 3:
            raise ConfigError(f"model.trunk_blocks must be three block counts, not {self.trunk_blocks}")
        if self.frozen_blocks and self.backbone != "mobilenet_v2":
            raise ConfigError("model.frozen_blocks is implemented for the mobilenet_v2 backbone only")
        if self.dsag_conv5_g != self.global_dim or self.dsag_conv5_l != self.part_dim:
            raise ConfigError(
                f"model.dsag_conv5_g / dsag_conv5_l ({self.dsag_conv5_g}, {self.dsag_conv5_l}) must equal "
                f"model.global_dim / part_dim ({self.global_dim}, {self.part_dim}) for element-wise fusion")

    def to_dict(self) -> dict[str, Any]:
        """JSON-native values (``trunk_blocks`` a list), so that config.json and a checkpoint's copy compare equal."""
        d = dataclasses.asdict(self)
        d["trunk_blocks"] = list(self.trunk_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Rebuild from ``to_dict`` output; unknown keys are an error (a config from another version)."""
        return _build(cls, dict(d), "model")


@dataclass(frozen=True)
class Recipe:
    """Training recipe (paper §3.2.4 and §4.2); the defaults are the paper's.

    Learning rate: linear warm-up from ``lr_start`` to ``lr_peak`` over ``warmup_epochs``, then ×
    ``lr_decay_gamma`` every ``lr_decay_step`` epochs.  Loss: ``w_id_mf`` × (ID on f_G + ID on the parts
    f_L,i, combined by ``part_id_reduction``) + ``w_triplet`` × (triplet on z_G + z_L) + ``w_id_fused`` ×
    (ID on z_G + z_L).  Switches beyond the paper (0 = off): ``w_triplet_mf``, ``drop_d``, ``w_distill``,
    ``dsag_first_epochs`` (``dsa.losses``).
    """

    epochs: int = param(320, "training epochs", ge=1, le=100000)
    warmup_epochs: int = param(20, "linear warm-up epochs", ge=0, le=100000)
    lr_start: float = param(8e-6, "learning rate at the start of the warm-up", ge=0.0, le=10.0)
    lr_peak: float = param(8e-4, "learning rate after the warm-up", gt=0.0, le=10.0)
    lr_decay_step: int = param(40, "epochs between learning-rate decays", ge=1, le=100000)
    lr_decay_gamma: float = param(0.5, "learning-rate decay factor", gt=0.0, le=1.0)
    optimizer: str = param("adam", "optimizer", choices=("adam",))
    weight_decay: float = param(5e-4, "weight decay", ge=0.0, le=1.0)
    batch_p: int = param(16, "identities per batch (P)", ge=2, le=100000)
    batch_k: int = param(4, "images per identity (K)", ge=1, le=1000)
    margin: float = param(0.3, "batch-hard triplet margin", ge=0.0, le=100.0)
    w_id_mf: float = param(0.5, "weight of the ID losses on the MF features f", ge=0.0, le=1000.0)
    w_triplet: float = param(1.5, "weight of the triplet losses on the fused features z", ge=0.0, le=1000.0)
    w_id_fused: float = param(1.0, "weight of the ID losses on the fused features z", ge=0.0, le=1000.0)
    part_id_reduction: str = param("sum", "how the 8 part ID terms combine: sum (the paper: 9 ID terms at "
                                   "w_id_mf) or mean (the 8 part terms weigh as much as the global one)",
                                   choices=("sum", "mean"))
    label_smoothing: float = param(0.1, "label smoothing of the ID losses", ge=0.0, lt=1.0)
    random_erasing: float = param(0.5, "random erasing probability (0 disables)", ge=0.0, le=1.0)
    pad: int = param(10, "padding before the random crop", ge=0, le=1024)
    flip: float = param(0.5, "horizontal flip probability", ge=0.0, le=1.0)
    dsap_flip: bool = param(True, "mirror an image's DSAP images with it (parts swapped, charts mirrored)")
    w_triplet_mf: float = param(0.0, "beyond the paper: triplet on f_G / f_L beside the fused one", ge=0.0, le=1000.0)
    drop_d: float = param(0.0, "beyond the paper: fraction of steps with z = f", ge=0.0, le=1.0)
    w_distill: float = param(0.0, "beyond the paper: similarity distillation of d into f", ge=0.0, le=1000.0)
    dsag_first_epochs: int = param(0, "beyond the paper: first epochs with z = d", ge=0, le=100000)

    def __post_init__(self) -> None:
        check_fields(self, "recipe")
        if self.lr_start > self.lr_peak:
            raise ConfigError(f"recipe.lr_start={self.lr_start:g} is above recipe.lr_peak={self.lr_peak:g}")

    @property
    def batch_size(self) -> int:
        return self.batch_p * self.batch_k

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig:
    """The whole configuration of a training run (a config file resolved with its overrides)."""

    name: str = param("paper", "the preset or config file it came from")
    description: str = param("", "one line on what this configuration is for")
    variant: str = param("dsa", "network variant (paper Tables 3-5)", choices=tuple(VARIANTS))
    pretrained: str = param("none", "MF-Stream backbone weights: none, imagenet or a state-dict file")
    seed: int = param(0, "seed of the initialisation, the batches and the augmentation", ge=0, le=2**32 - 1)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: Recipe = field(default_factory=Recipe)

    def __post_init__(self) -> None:
        check_fields(self, "")
        if not self.pretrained.strip():
            raise ConfigError("pretrained='' is not allowed: use none, imagenet or the path of a state-dict file")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "variant": self.variant,
                "pretrained": self.pretrained, "seed": self.seed, "data": self.data.to_dict(),
                "model": self.model.to_dict(), "recipe": self.recipe.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "the configuration") -> "TrainConfig":
        return _build(cls, dict(d), "", where)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def uses_dsap(self) -> bool:
        return VARIANTS[self.variant][2]


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "recipe": Recipe}


# --------------------------------------------------------------------------------------------------
# building a tree from plain values (a YAML file, config.json, --set)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)



def _build(cls: type, values: dict[str, Any], section: str, where: str = "the configuration") -> Any:
    """An instance of the dataclass ``cls`` from plain values: unknown keys, wrong types and values out
    of range are ConfigErrors naming the field."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        prefix = f"{section}." if section else ""
        raise ConfigError(f"{where} has no field {', '.join(prefix + u for u in unknown)}; the known fields of "
                          f"{section or 'the top level'} are: {', '.join(names)}")
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{section}.{key}" if section else key
        if key in SECTIONS and not section:
            if isinstance(value, SECTIONS[key]):
                kwargs[key] = value
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} must be a mapping of fields, not {value!r}")
            kwargs[key] = _build(SECTIONS[key], value, key, where)
        else:
            kwargs[key] = convert(dotted, value, hints[key])
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


# --------------------------------------------------------------------------------------------------
# config files


def preset_names() -> list[str]:
    """The shipped presets: the stems of ``dsa/configs/*.yaml``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _find(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    text = str(name_or_path)
    candidates = []
    p = Path(text).expanduser()
    if p.suffix in (".yaml", ".yml") or "/" in text or p.is_file():
        candidates += [p] + ([relative_to / p] if relative_to is not None and not p.is_absolute() else [])
    else:
        candidates.append(CONFIG_DIR / f"{text}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    if candidates and candidates[0].parent == CONFIG_DIR:
        raise ConfigError(f"unknown preset {text!r}; choose one of: {', '.join(preset_names())}, "
                          f"or give a config file path")
    raise ConfigError(f"the config file {text} does not exist")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the config file {path} ({e.__class__.__name__}: {e})") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"the config file {path} is not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the config file {path} must hold a mapping of fields, not a {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_values(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Path]:
    """The plain values of a config file with its ``_base_`` chain merged in (the file's own win), and
    the file's path."""
    path = _find(name_or_path, _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        raise ConfigError(f"the config file {path} inherits from itself (through {' -> '.join(map(str, _seen))})")
    values = _read_yaml(path)
    base = values.pop("_base_", None)
    if base is not None:
        base_values, _ = read_config_values(base, (*_seen, path))
        base_values.pop("name", None)
        base_values.pop("description", None)
        values = _merge(base_values, values)
    values.setdefault("name", path.stem)
    return values, path


def load_config(name_or_path: str | Path = "paper") -> TrainConfig:
    """The configuration of a preset name (``dsa/configs/<name>.yaml``) or a config file path."""
    values, path = read_config_values(name_or_path)
    return TrainConfig.from_dict(values, where=f"the config file {path}")


def get_preset(name: str) -> TrainConfig:
    """The shipped preset ``name`` (an unknown name is a ConfigError listing them)."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return load_config(name)


# --------------------------------------------------------------------------------------------------
# overrides (--set section.field=value)


def override_keys() -> dict[str, Any]:
    """Every key ``--set`` accepts and the type of its value: top-level fields and ``section.field``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in SECTIONS:
            out[f.name] = _field_types(TrainConfig)[f.name]
    for section, cls in SECTIONS.items():
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = hints[f.name]
    return out


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """``["recipe.lr_peak=3.5e-4", "model.height=384"]`` → ``{"recipe.lr_peak": 0.00035, ...}``, typed from
    the field types; a malformed pair, an unknown key (the known ones are listed) or a value of the wrong
    type is a ConfigError.  A key given twice keeps its last value."""
    known = override_keys()
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} is not of the form section.field=value (e.g. recipe.lr_peak=3.5e-4)")
        if key not in known:
            raise ConfigError(f"--set has no key {key!r}; the known keys are: {', '.join(known)}")
        out[key] = convert(f"--set {key}", text, known[key])
    return out


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """``config`` with the parsed ``overrides`` applied and the result validated; a value out of range
    or a combination the network refuses is a ConfigError naming the field."""
    values = config.to_dict()
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        target = values[section] if section else values
        target[name] = list(value) if isinstance(value, tuple) else value
    return TrainConfig.from_dict(values, where="the configuration with --set " +
                                 " ".join(f"{k}={v}" for k, v in overrides.items()))


def resolve_config(config: str | Path = "paper", overrides: typing.Iterable[str] = ()) -> TrainConfig:
    """The one configuration path: a preset name or config file, then ``--set`` pairs."""
    return apply_overrides(load_config(config), parse_overrides(overrides))


def dump_yaml(config: TrainConfig) -> str:
    """The resolved tree as YAML (what ``python -m train --print-config`` prints; loadable with
    ``--config``)."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, width=100)
