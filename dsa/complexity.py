"""Parameter counts and FLOPs of a preset's network (``python -m dsa.complexity --preset paper``).

Models are built on the ``meta`` device (no memory, no compute) and FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = 2 FLOPs), per image, forward only.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import click
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .model import VARIANTS, DSANet, InferenceModel
from .config import load_config, preset_names


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _flops(fn, *args) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


def complexity(preset: str, variant: str = "dsa", num_classes: int = 751) -> dict[str, Any]:
    """Parameter counts per component and per-image forward FLOPs (training model, inference model);
    ``preset`` is a preset name or a config file."""
    cfg = load_config(preset).model
    with torch.device("meta"):
        net = DSANet(cfg, num_classes, variant)
        inference = InferenceModel(net, "mf")
        images = torch.empty(1, 3, cfg.height, cfg.width)
        dsap = torch.empty(1, 24, 3, cfg.dsap_size, cfg.dsap_size)
    net.eval()
    mf, dsag = net.mf, net.dsag
    heads = [net.cls_fG, net.cls_fL, net.cls_zG, net.cls_zL, net.fuse_G, net.fuse_L]
    params = {
        "mf_backbone": count_params(mf.backbone),
        "mf_global_branch": count_params(mf.global_branch),
        "mf_part_branches": count_params(mf.part_branch),
        "mf_stream": count_params(mf),
        "dsag_mbns": count_params(dsag) - count_params(dsag.head_g) - count_params(dsag.head_l) if dsag else 0,
        "dsag_conv5_g": count_params(dsag.head_g) if dsag else 0,
        "dsag_conv5_l": count_params(dsag.head_l) if dsag else 0,
        "dsag_stream": count_params(dsag),
        "classifiers_and_fusion": sum(count_params(h) for h in heads),
        "total_training": count_params(net),
        "inference_model": count_params(inference),
    }
    flops = {
        "mf_stream": _flops(mf, images),
        "dsag_stream": _flops(dsag, dsap) if dsag else 0,
        "training_forward": _flops(net, images, dsap if dsag else None),
        "inference_model": _flops(inference, images),
    }
    return {"preset": preset, "variant": variant, "num_classes": num_classes,
            "input": [cfg.height, cfg.width], "dsap_size": cfg.dsap_size,
            "feature_dim": inference.dim, "params": params, "flops_per_image": flops}


@click.command()
@click.option("--preset", "--config", "preset", default="paper", show_default=True,
              help=f"a preset ({', '.join(preset_names())}) or a config file")
@click.option("--variant", default="dsa", show_default=True, type=click.Choice(list(VARIANTS)))
@click.option("--num-classes", default=751, show_default=True, type=click.IntRange(min=1),
              help="training identities (Market-1501: 751)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of the table")
def main(preset: str, variant: str, num_classes: int, as_json: bool) -> None:
    """Print the parameter counts and FLOPs of a preset's network."""
    from .errors import UserError

    try:
        r = complexity(preset, variant, num_classes)
    except UserError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        print(json.dumps(r, indent=2))
        return
    h, w = r["input"]
    print(f"preset {preset}, variant {variant}, input {h}x{w}, DSAP {r['dsap_size']}x{r['dsap_size']}, "
          f"{num_classes} classes, inference feature {r['feature_dim']}-d")
    print(f"{'parameters':<26}{'M':>10}")
    for k, v in r["params"].items():
        print(f"  {k:<24}{v / 1e6:>10.2f}")
    print(f"{'forward FLOPs per image':<26}{'GFLOPs':>10}")
    for k, v in r["flops_per_image"].items():
        print(f"  {k:<24}{v / 1e9:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
