"""Fine-tuning and overrides: ``--init`` from a tiny run with other identities, ``--set`` parsing and refusals,
the synthetic dataset's two disjoint identity halves (the CUHK03 -> CUHK01 recipe's stand-in)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import write_tiny_run
from dsa.config import PresetError, apply_overrides, get_preset, override_keys, parse_overrides


# --------------------------------------------------------------------------- --set
def test_overrides_are_typed_from_the_dataclass_fields() -> None:
    got = parse_overrides(["recipe.lr_peak=3.5e-4", "model.height=384", "recipe.w_triplet=1",
                           "recipe.optimizer=adam", "model.height=128", "data.tag=none", "seed=3"])
    assert got == {"recipe.lr_peak": 3.5e-4, "model.height": 128, "recipe.w_triplet": 1.0, "recipe.optimizer": "adam",
                   "data.tag": None, "seed": 3}
    assert type(got["model.height"]) is int and type(got["recipe.w_triplet"]) is float
    preset = apply_overrides(get_preset("small"), got)
    assert preset.model.height == 128 and preset.recipe.lr_peak == 3.5e-4 and preset.seed == 3
    assert preset.model.width == get_preset("small").model.width  # untouched fields keep the preset's value
    assert override_keys()["recipe.epochs"] is int and override_keys()["recipe.margin"] is float


@pytest.mark.parametrize("pairs, message", [
    (["recipe.lr=1"], "has no key 'recipe.lr'; the known keys are: name, description, variant"),
    (["lr_peak=1"], "has no key 'lr_peak'"),
    (["model.height=tall"], "needs an int value, not 'tall'"),
    (["model.height=3.5"], "needs an int value"),
    (["recipe.lr_peak=fast"], "needs a float value, not 'fast'"),
    (["recipe.lr_peak"], "is not of the form section.field=value"),
])
def test_bad_overrides_are_one_sentence(pairs: list[str], message: str) -> None:
    with pytest.raises(PresetError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_overrides(pairs)


def test_an_override_the_network_refuses_is_a_sentence() -> None:
    with pytest.raises(PresetError, match="model.height=100 is out of range: it must be ≥ 16 and ≤ 2048 and a multiple of 16"):
        apply_overrides(get_preset("tiny"), parse_overrides(["model.height=100"]))
    with pytest.raises(PresetError, match=r"model.dsag_conv5_g / dsag_conv5_l \(32, 8\) must equal model.global_dim"):
        apply_overrides(get_preset("tiny"), parse_overrides(["model.global_dim=64"]))
    with pytest.raises(PresetError, match="part_id_reduction"):
        apply_overrides(get_preset("tiny"), parse_overrides(["recipe.part_id_reduction=max"]))


# --------------------------------------------------------------------------- the synthetic halves
def write_store(root: Path, dataset: str) -> None:
    """The store of ``dataset`` (a synthetic spec) from its ground-truth IUV, as ``precompute`` writes it."""
    from data.datasets import build_dataset
    from data.io import read_image, read_iuv_png
    from data.store import StoreSettings, StoreWriter, store_dir
    from dsa.dsap import warp_dsap

    ds = build_dataset(dataset, root)
    keys = [it.key for it in ds.all_items()]
    dsap, written = [], []
    for key in keys:
        iuv = read_iuv_png(ds.root / (key[:-4] + "_IUV.png"))
        a, b = warp_dsap(read_image(ds.root / key), iuv.I, iuv.U, iuv.V, 32)
        dsap.append(a)
        written.append(b)
    writer = StoreWriter(store_dir(root, dataset, "synthetic"), StoreSettings("synthetic", {}, 32, "dsap"))
    writer.write_shard(0, keys, np.stack(dsap), np.stack(written), np.ones(len(keys), bool))
    writer.write_manifest("synthetic", keys, 1)


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("halves")
    generate(root / "synthetic", num_ids=16, num_cameras=2, seed=0, preview=False, workers=1, progress=False)
    for spec in ("synthetic:ids=first", "synthetic:ids=second"):
        write_store(root, spec)
    return root


def test_synthetic_halves_are_disjoint_sets_of_people(halves: Path) -> None:
    from data.datasets import DatasetError, build_dataset

    def people(spec: str) -> set[int]:
        ds = build_dataset(spec, halves)
        raw = {it.pid for it in (*ds.query, *ds.gallery)} | set(ds.train_pid_map)
        assert ds.train and ds.query and ds.gallery
        return raw

    first, second, every = people("synthetic:ids=first"), people("synthetic:ids=second"), people("synthetic")
    assert first and second and not first & second
    assert first | second == every and max(first) <= 8 < min(second)
    with pytest.raises(DatasetError, match="must be one of all, first, second"):
        build_dataset("synthetic:ids=third", halves)


# --------------------------------------------------------------------------- --init
def train(root: Path, runs: Path, run: str, dataset: str, *extra: str):
    from train.__main__ import main

    args = ["--dataset", dataset, "--root", str(root), "--preset", "tiny", "--run", run, "--runs-dir", str(runs),
            "--workers", "0", "--device", "cpu", "--max-steps", "1", "--batch-p", "2", *extra]
    return CliRunner().invoke(main, args)


def test_finetune_from_a_run_with_other_identities(halves: Path, tmp_path: Path) -> None:
    from data.runs import load_checkpoint

    src = train(halves, tmp_path, "src", "synthetic:ids=first")
    assert src.exit_code == 0, src.output
    dst = train(halves, tmp_path, "dst", "synthetic:ids=second", "--init", "src")
    assert dst.exit_code == 0, dst.output
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    record = config["init_source"]
    assert config["init"] == "src" and record["checkpoint"] == str(tmp_path / "src" / "checkpoint.pt")
    assert record["dataset"] == "synthetic:ids=first" and record["step"] == 1
    assert record["copied"] == ["mf", "dsag"] and record["new"] == ["cls_fG", "cls_fL", "cls_zG", "cls_zL"]
    assert len(record["checkpoint_sha256"]) == 64
    assert load_checkpoint(tmp_path / "dst" / "checkpoint.pt").config["init_source"] == record
    # resuming keeps the record; another source is another configuration
    again = train(halves, tmp_path, "dst", "synthetic:ids=second", "--init", "src", "--max-steps", "2")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["init_source"] == record
    other = train(halves, tmp_path, "dst", "synthetic:ids=second", "--max-steps", "3")
    assert other.exit_code == 2 and "init (saved 'src', now None)" in other.output, other.output


def test_init_copies_the_streams_and_makes_new_classifiers(tmp_path: Path) -> None:
    from dsa.model import DSANet
    from train.init import init_from

    src_ckpt = write_tiny_run(tmp_path / "src", num_classes=3, seed=1)
    src = torch.load(src_ckpt, weights_only=True)["model"]
    net = DSANet(get_preset("tiny").model, 5, variant="dsa")
    record = init_from(net, tmp_path / "src")
    own = net.state_dict()
    for k, v in own.items():
        if k.startswith(("mf.", "dsag.")):
            assert torch.equal(v, src[k]), k
    assert own["cls_fG.fc2.weight"].shape == (5, 16) and src["cls_fG.fc2.weight"].shape == (3, 16)
    assert not torch.equal(own["cls_fG.fc1.weight"], src["cls_fG.fc1.weight"])  # new, not copied
    assert record["copied"] == ["mf", "dsag"] and record["num_classes"] == 3
    # a source without a DSAG-Stream: the MF-Stream is copied, the DSAG-Stream stays fresh
    write_tiny_run(tmp_path / "tb", variant="two-branch", seed=2)
    net2 = DSANet(get_preset("tiny").model, 5, variant="dsa")
    before = {k: v.clone() for k, v in net2.state_dict().items() if k.startswith("dsag.")}
    record = init_from(net2, tmp_path / "tb" / "checkpoint.pt")
    assert record["copied"] == ["mf"] and record["new"][0] == "dsag"
    assert all(torch.equal(net2.state_dict()[k], v) for k, v in before.items())


def test_init_mismatch_names_the_first_layer(halves: Path, tmp_path: Path) -> None:
    write_tiny_run(tmp_path / "src")
    res = train(halves, tmp_path, "dst", "synthetic:ids=second", "--init", "src", "--set", "model.base_width=8")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert "its MF-Stream does not fit this network (layer 'mf.backbone.conv1.weight' has shape (4, 3, 7, 7) " \
           "in the source but (8, 3, 7, 7) here)" in res.output, res.output
    assert not (tmp_path / "dst" / "config.json").exists()
    baseline = write_tiny_run(tmp_path / "base", variant="baseline")
    res = train(halves, tmp_path, "dst", "synthetic:ids=second", "--init", str(baseline))
    assert res.exit_code == 2 and "the source has no layer 'mf." in res.output, res.output
    res = train(halves, tmp_path, "dst", "synthetic:ids=second", "--init", "nowhere")
    assert res.exit_code == 2 and "no checkpoint found for 'nowhere'" in res.output, res.output


# --------------------------------------------------------------------------- --set through the CLI
def test_set_is_recorded_and_refused_on_resume_when_it_changes_the_run(halves: Path, tmp_path: Path) -> None:
    first = train(halves, tmp_path, "r", "synthetic:ids=first", "--set", "recipe.lr_peak=2e-3",
                  "--set", "model.height=96")
    assert first.exit_code == 0, first.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["source"]["overrides"] == {"data.dataset": "synthetic:ids=first", "recipe.batch_p": 2,
                                             "recipe.lr_peak": 2e-3, "model.height": 96}
    assert config["recipe"]["lr_peak"] == 2e-3 and config["model"]["height"] == 96
    changed = train(halves, tmp_path, "r", "synthetic:ids=first", "--set", "recipe.lr_peak=3e-3",
                    "--set", "model.height=96", "--max-steps", "2")
    assert changed.exit_code == 2 and "another configuration: recipe.lr_peak (saved 0.002, now 0.003)" in changed.output, changed.output
    dropped = train(halves, tmp_path, "r", "synthetic:ids=first", "--max-steps", "2")
    assert dropped.exit_code == 2 and "model.height (saved 96, now 64)" in dropped.output, dropped.output
    same = train(halves, tmp_path, "r", "synthetic:ids=first", "--set", "model.height=96",
                 "--set", "recipe.lr_peak=2e-3", "--max-steps", "2")
    assert same.exit_code == 0, same.output
    unknown = train(halves, tmp_path, "r2", "synthetic:ids=first", "--set", "recipe.lr=1")
    assert unknown.exit_code == 2 and "the known keys are: name, description" in unknown.output
