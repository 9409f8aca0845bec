"""The trainer: loss falls, exact resume (max-steps stop and SIGTERM), NaN stop, schedule, DDP, CLI errors.

The loop tests use a tiny stand-in network on fabricated images and a real (fabricated) DSAP store,
so that they run in seconds; the CLI tests build the real tiny DSANet.  Run as a script under
``torchrun`` this file is also the DDP test's worker (see ``ddp_worker``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.joint import JointDataset, TrainBatches
from data.sampler import PKSampler
from data.store import DSAPStore, StoreSettings, StoreWriter, store_dir
from data.transforms import build_train_transform
from dsa.config import Recipe, get_preset
from data.runs import RunFolder, load_checkpoint
from train.rng import rng_state, set_rng_state
from train.distributed import DistInfo, init_distributed, shutdown
from train.schedule import build_optimizer, build_scheduler, lr_at
from train.trainer import Trainer, TrainingError, seed_everything, set_deterministic

NUM_IDS, PER_ID, S = 6, 4, 8
RECIPE = Recipe(epochs=3, warmup_epochs=1, lr_start=1e-3, lr_peak=1e-2, lr_decay_step=2, batch_p=2, batch_k=2)


@dataclass(frozen=True)
class Item:
    key: str
    pid: int
    camid: int


def make_data(folder: Path) -> tuple[list[Item], DSAPStore]:
    """Images whose colour depends on the identity (learnable), and a store of matching DSAP images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items, dsap = [], []
    for pid in range(NUM_IDS):
        colour = rng.integers(0, 256, 3)
        for k in range(PER_ID):
            image = np.clip(colour + rng.normal(0, 20, (32, 16, 3)), 0, 255).astype(np.uint8)
            name = f"{pid:04d}_c{k % 2}_{k}.png"
            cv2.imwrite(str(folder / name), image[..., ::-1])
            items.append(Item(name, pid, k % 2))
            dsap.append(np.broadcast_to(colour.astype(np.uint8)[None, :, None, None], (24, 3, S, S)))
    keys = [it.key for it in items]
    writer = StoreWriter(folder / "store", StoreSettings("test", {}, size=S))
    writer.write_shard(0, keys, np.stack(dsap), np.ones((len(keys), 24, S, S), bool), np.ones(len(keys), bool))
    writer.write_manifest("test", keys, 1)
    return items, DSAPStore(folder / "store")


class StandIn(nn.Module):
    """A few-hundred-parameter two-input network with BatchNorm (so DDP has buffers to keep in sync)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dsag = nn.Linear(3, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, images: torch.Tensor, dsap: torch.Tensor | None = None) -> dict:
        f = self.conv(images).mean((2, 3))
        if dsap is not None:
            f = f + self.dsag(dsap.mean((1, 3, 4)))
        return {"f": f, "logits": self.fc(f)}


class Loss:
    """Cross-entropy, with hooks: record the pids seen, raise a signal or return NaN at a given step."""

    def __init__(self, signal_at: int | None = None, nan_at: int | None = None,
                 nan_grad_at: int | None = None) -> None:
        self.calls, self.signal_at, self.nan_at, self.nan_grad_at = 0, signal_at, nan_at, nan_grad_at
        self.pids: list[list[int]] = []

    def __call__(self, out: dict, pids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        self.calls += 1
        self.pids.append(pids.tolist())
        ce = F.cross_entropy(out["logits"], pids)
        if self.calls == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.calls == self.nan_at:
            ce = ce * float("nan")
        if self.calls == self.nan_grad_at:  # value 0, gradient 0 * inf = NaN: the weights go NaN
            ce = ce + (out["logits"] * 0).sum().sqrt()
        return ce, {"ce": ce}


#: the configuration the stand-in's checkpoints carry (data.runs needs a model configuration in every one)
STAND_IN_CONFIG = {"preset": "tiny", "variant": "dsa", "num_classes": NUM_IDS, "model": get_preset("tiny").model.to_dict()}


def raw_checkpoint(path: Path) -> dict:
    """The checkpoint dict as stored (format of data.runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def make_trainer(run_dir: Path, data: tuple[list[Item], DSAPStore], *, info: DistInfo | None = None,
                 max_steps: int | None = None, workers: int = 0, loss: Loss | None = None,
                 log_every: int = 1, epochs: int = RECIPE.epochs, compile: bool = False) -> Trainer:
    items, store = data
    info = info or DistInfo()
    seed_everything(0)
    model = StandIn(NUM_IDS)
    dataset = JointDataset(items, Path(store.folder).parent, store, build_train_transform(32, 16, pad=2))
    sampler = PKSampler(dataset.pids, RECIPE.batch_p, RECIPE.batch_k, seed=0, rank=info.rank,
                        world_size=info.world_size)
    optimizer = build_optimizer(model.parameters(), RECIPE)
    return Trainer(model=model, loss_fn=loss or Loss(), data=TrainBatches(dataset, sampler, workers=workers),
                   optimizer=optimizer, scheduler=build_scheduler(optimizer, RECIPE), run=RunFolder(run_dir),
                   info=info, epochs=epochs, max_steps=max_steps, log_every=log_every,
                   config=STAND_IN_CONFIG, progress=False, compile=compile)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Item], DSAPStore]:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture()
def deterministic():
    set_deterministic(True)
    yield
    set_deterministic(False)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.bare_model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_loss_falls_and_log_records(tmp_path: Path, data) -> None:
    trainer = make_trainer(tmp_path / "run", data, epochs=8)
    summary = trainer.fit()
    assert summary["stopped_by"] == "complete" and summary["epoch"] == 8
    everything = read_log(tmp_path / "run")
    records = [r for r in everything if "event" not in r]
    epochs = [r for r in everything if r.get("event") == "epoch_end"]
    assert [r["step"] for r in records] == list(range(1, summary["step"] + 1))
    assert [r["epoch"] for r in epochs] == list(range(8))
    assert epochs[0]["loss"] == pytest.approx(np.mean([r["loss"] for r in records if r["epoch"] == 0]))
    assert {"step", "epoch", "loss", "ce", "lr", "images_per_s", "memory_mb"} <= records[0].keys()
    first = np.mean([r["loss"] for r in records[:6]])
    last = np.mean([r["loss"] for r in records[-6:]])
    assert last < 0.6 * first, (first, last)
    ckpt = raw_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert set(ckpt) == {"format_version", "config", "model", "epoch", "step", "complete", "training"}
    assert set(ckpt["training"]) == {"optimizer", "scheduler", "scaler", "sampler", "rng", "epoch_log"}
    assert ckpt["format_version"] == 3 and ckpt["config"] == STAND_IN_CONFIG
    assert ckpt["complete"] is True and ckpt["epoch"] == 8


def test_resume_after_max_steps_is_exact(tmp_path: Path, data, deterministic) -> None:
    straight = make_trainer(tmp_path / "a", data)
    straight.fit()
    total = straight.step
    half = total // 2 + 1  # mid-epoch
    first = make_trainer(tmp_path / "b", data, max_steps=half)
    assert first.fit()["stopped_by"] == "max-steps" and first.step == half
    torch.manual_seed(1234)  # a resumed process starts from other random states
    np.random.seed(99)
    second = make_trainer(tmp_path / "b", data)
    assert second.resume_if_possible() and second.step == half
    second.fit()
    assert second.step == total
    assert_same(weights(straight), weights(second))
    assert [r["loss"] for r in read_log(tmp_path / "a")] == [r["loss"] for r in read_log(tmp_path / "b")]


def test_compiled_training_keeps_the_modules_names_and_values(tmp_path: Path, data, deterministic, monkeypatch) -> None:
    """--compile: the step runs through torch.compile (here its eager backend, which needs no C compiler
    and computes the same values), and checkpoints carry the network's own parameter names."""
    calls = []
    real = torch.compile

    def eager_compile(model, **kw):
        calls.append(type(model).__name__)
        return real(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    plain = make_trainer(tmp_path / "a", data, max_steps=3)
    plain.fit()
    compiled = make_trainer(tmp_path / "b", data, max_steps=3, compile=True)
    assert calls == ["StandIn"] and compiled.model is not compiled.bare_model
    compiled.fit()
    saved = raw_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert not any("_orig_mod" in k for k in saved)
    assert_same(weights(plain), weights(compiled))


def test_autocast_settings() -> None:
    from train.trainer import autocast_settings

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_settings(cuda, True, "float16") == (True, torch.float16, True)
    assert autocast_settings(cuda, True, "bfloat16") == (True, torch.bfloat16, False)  # no loss scaling
    assert autocast_settings(cuda, False, "bfloat16") == (False, torch.bfloat16, False)
    assert autocast_settings(cpu, True, "float16") == (False, torch.float16, False)  # CUDA only
    with pytest.raises(ValueError, match="amp_dtype"):
        autocast_settings(cuda, True, "float8")


def test_sigterm_saves_and_resume_is_exact_with_workers(tmp_path: Path, data, deterministic) -> None:
    straight = make_trainer(tmp_path / "a", data, workers=1)
    straight.fit()
    stopped = make_trainer(tmp_path / "b", data, workers=1, loss=Loss(signal_at=4))
    summary = stopped.fit()
    assert summary["stopped_by"] == "signal" and summary["step"] == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    resumed = make_trainer(tmp_path / "b", data, workers=0)  # worker count does not change the data
    assert resumed.resume_if_possible()
    resumed.fit()
    assert_same(weights(straight), weights(resumed))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, data) -> None:
    probe = make_trainer(tmp_path / "probe", data, max_steps=1)
    steps_per_epoch = len(probe.sampler)
    trainer = make_trainer(tmp_path / "run", data, loss=Loss(nan_at=steps_per_epoch + 2))
    with pytest.raises(TrainingError, match=rf"'ce'.*step {steps_per_epoch + 2}.*last good checkpoint"):
        trainer.fit()
    ckpt = raw_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == steps_per_epoch and ckpt["epoch"] == 1 and not ckpt["complete"]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_non_finite_weights_after_a_finite_loss_are_never_saved(tmp_path: Path, data) -> None:
    probe = make_trainer(tmp_path / "probe", data, max_steps=1)
    first, second = len(probe.sampler.plan(0)), len(probe.sampler.plan(1))
    # the last step of epoch 1 has a finite loss but NaN gradients; its epoch-end checkpoint must not be written
    trainer = make_trainer(tmp_path / "run", data, loss=Loss(nan_grad_at=first + second))
    with pytest.raises(TrainingError, match=rf"weights became NaN or infinite by step {first + second} .*"
                                            r"last good checkpoint"):
        trainer.fit()
    ckpt = raw_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == first and ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_a_sentence(tmp_path: Path, workers: int) -> None:
    items, store = make_data(tmp_path / "data")
    (tmp_path / "data" / items[5].key).write_bytes(b"")  # a zero-byte image
    trainer = make_trainer(tmp_path / "run", (items, store), workers=workers)
    with pytest.raises(TrainingError, match=rf"cannot read image .*{items[5].key}: file is empty"):
        trainer.fit()


def test_schedule_follows_the_paper() -> None:
    paper = Recipe()
    assert lr_at(0, paper) == pytest.approx(8e-6)
    assert lr_at(10, paper) == pytest.approx(8e-6 + (8e-4 - 8e-6) / 2)
    assert lr_at(20, paper) == lr_at(59, paper) == pytest.approx(8e-4)
    assert lr_at(60, paper) == pytest.approx(4e-4) and lr_at(100, paper) == pytest.approx(2e-4)
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], paper)
    assert optimizer.param_groups[0]["weight_decay"] == 5e-4
    scheduler = build_scheduler(optimizer, paper)
    seen = []
    for _ in range(70):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(e, paper) for e in range(70)])


def test_rng_state_round_trip() -> None:
    import random

    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


# --------------------------------------------------------------------------- the CLI on the real network
def write_store(root: Path, keys: list[str], *, tag: str | None = None, size: int = 32, kind: str = "dsap") -> None:
    """A store for the synthetic dataset from its ground-truth IUV (what ``precompute`` would write)."""
    from data.io import read_image, read_iuv_png
    from dsa.dsap import crop_csa, warp_dsap

    dataset_dir = root / "synthetic"
    dsap, written = [], []
    for key in keys:
        image = read_image(dataset_dir / key)
        iuv = read_iuv_png(dataset_dir / (key[:-4] + "_IUV.png"))
        a, b = warp_dsap(image, iuv.I, iuv.U, iuv.V, size) if kind == "dsap" else crop_csa(image, iuv.I, size)
        dsap.append(a)
        written.append(b)
    writer = StoreWriter(store_dir(root, "synthetic", "synthetic", tag), StoreSettings("synthetic", {}, size, kind))
    writer.write_shard(0, keys, np.stack(dsap), np.stack(written), np.ones(len(keys), bool))
    writer.write_manifest("synthetic", keys, 1)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data.datasets import build_dataset
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root / "synthetic", num_ids=8, num_cameras=2, seed=0, preview=False, workers=1, progress=False)
    keys = [it.key for it in build_dataset("synthetic", root).all_items()]
    write_store(root, keys)
    write_store(root, keys[: len(keys) // 2], tag="partial")
    write_store(root, keys, tag="s16", size=16)
    return root


def cli(root: Path, runs: Path, *extra: str):
    from click.testing import CliRunner

    from train.__main__ import main

    args = ["--dataset", "synthetic", "--root", str(root), "--preset", "tiny", "--run", "r", "--runs-dir",
            str(runs), "--workers", "0", "--device", "cpu", *extra]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("extra, message", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--tag", "partial"], r"does not cover the dataset: \d+ of \d+ images missing \(e\.g\. "),
    (["--tag", "s16"], "16x16 part images but the network expects S=32"),
    (["--tag", "none-here"], "no DSAP store at"),
    (["--input", "csa"], "holds 'dsap' part images, not 'csa'"),
])
def test_cli_bad_inputs_are_one_sentence(tmp_path: Path, synth_root: Path, extra: list[str], message: str) -> None:
    result = cli(synth_root, tmp_path, *extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert __import__("re").search(message, result.output), result.output


def test_cli_refuses_a_run_of_another_configuration(tmp_path: Path, synth_root: Path) -> None:
    (tmp_path / "r").mkdir()
    saved = {"dataset": "synthetic", "preset": "tiny", "variant": "two-branch"}
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    result = cli(synth_root, tmp_path)
    assert result.exit_code == 2
    assert "another configuration" in result.output and "variant (saved 'two-branch', now 'dsa')" in result.output


def test_cli_failed_start_does_not_pin_its_configuration(tmp_path: Path, synth_root: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    first = cli(synth_root, tmp_path, "--pretrained", str(bad), "--max-steps", "1")
    assert first.exit_code == 2 and "cannot read pretrained weights" in first.output, first.output
    assert not (tmp_path / "r" / "config.json").exists()
    fixed = cli(synth_root, tmp_path, "--max-steps", "1")  # the corrected command is not refused
    assert fixed.exit_code == 0, fixed.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["pretrained"] == "none"


def test_cli_unreadable_checkpoint_or_config_is_a_sentence(tmp_path: Path, synth_root: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{truncated")
    result = cli(synth_root, tmp_path)
    assert result.exit_code == 2 and result.output.startswith("error: cannot read the run's configuration")
    assert len(result.output.strip().splitlines()) == 1, result.output
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a checkpoint")
    result = cli(synth_root, tmp_path)
    assert result.exit_code == 2 and result.output.startswith("error: cannot read the checkpoint"), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    torch.save({"model": {"nothing": torch.zeros(1)}, "config": None}, tmp_path / "r" / "checkpoint.pt")
    result = cli(synth_root, tmp_path)
    assert result.exit_code == 2 and "was not written by this program" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    torch.save({"format_version": 7, "model": {}}, tmp_path / "r" / "checkpoint.pt")
    result = cli(synth_root, tmp_path)
    assert result.exit_code == 2 and "format version 7" in result.output, result.output


def test_cli_trains_resumes_and_checks_the_checkpoint(tmp_path: Path, synth_root: Path) -> None:
    from dsa.model import build_dsanet

    first = cli(synth_root, tmp_path, "--max-steps", "1", "--log-every", "1")
    assert first.exit_code == 0, first.output
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    info = ckpt.info
    assert info.step == 1 and info.preset == "tiny" and info.variant == "dsa" and not info.complete
    assert build_dsanet(info.model, info.num_classes, info.variant, ckpt.model_state).num_classes == info.num_classes
    assert ckpt.config == json.loads((tmp_path / "r" / "config.json").read_text())
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["name"] == "tiny" and config["model"]["height"] == 64 and config["data"]["dataset"] == "synthetic"
    other = cli(synth_root, tmp_path, "--variant", "baseline", "--max-steps", "2")
    assert other.exit_code == 2 and "variant" in other.output
    second = cli(synth_root, tmp_path, "--max-steps", "2", "--log-every", "1")
    assert second.exit_code == 0, second.output
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt").info.step == 2
    assert [r["step"] for r in read_log(tmp_path / "r")][-1] == 2


# --------------------------------------------------------------------------- DDP (torchrun, gloo)
def ddp_worker(out: Path) -> None:
    """One rank of the DDP test: 3 steps on the stand-in, then this rank's parameters and pids to ``out``
    (BatchNorm running statistics are per rank under DDP, and rank 0's go into the checkpoint)."""
    set_deterministic(True)
    info = init_distributed("cpu")
    loss = Loss()
    trainer = make_trainer(out / "run", make_data(out / f"data{info.rank}"), info=info, max_steps=3, loss=loss)
    trainer.fit()
    params = {k: v.detach() for k, v in trainer.bare_model.named_parameters()}
    torch.save({"model": params, "pids": loss.pids}, out / f"rank{info.rank}.pt")
    shutdown(info)


@pytest.mark.ddp
def test_ddp_two_processes_agree(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not available")
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", __file__, "--ddp-worker", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert_same(r0["model"], r1["model"])
    seed_everything(0)
    initial = StandIn(NUM_IDS).state_dict()
    assert not torch.equal(initial["fc.weight"], r0["model"]["fc.weight"])  # it trained
    for p0, p1 in zip(r0["pids"], r1["pids"]):
        assert len(p0) == len(p1) == RECIPE.batch_k and not set(p0) & set(p1)  # disjoint identities
    ckpt = raw_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["training"]["sampler"]["world_size"] == 2


if __name__ == "__main__" and sys.argv[1:2] == ["--ddp-worker"]:
    ddp_worker(Path(sys.argv[2]))


def test_a_user_config_file_end_to_end(tmp_path: Path, synth_root: Path) -> None:
    """A user's YAML inheriting a preset, then --set: the tree --print-config shows is the one trained and
    stored in config.json; an alias option is the same as its --set key; a bad file is one sentence."""
    import yaml
    from click.testing import CliRunner

    from dsa.config import load_config
    from train.__main__ import main

    cfg = tmp_path / "my.yaml"
    cfg.write_text("_base_: tiny\ndata:\n  dataset: synthetic\nrecipe:\n  epochs: 5\n  lr_peak: 2.0e-3\nmodel:\n  height: 96\n")
    common = ["--config", str(cfg), "--set", "recipe.epochs=2", "--root", str(synth_root)]
    printed = CliRunner().invoke(main, [*common, "--print-config"])
    assert printed.exit_code == 0, printed.output
    tree = yaml.safe_load(printed.output)
    assert tree["name"] == "my" and tree["recipe"]["epochs"] == 2 and tree["recipe"]["lr_peak"] == 2e-3
    assert tree["model"]["height"] == 96 and tree["model"]["width"] == load_config("tiny").model.width
    assert load_config(cfg).recipe.epochs == 5  # the file alone
    res = CliRunner().invoke(main, [*common, "--run", "mine", "--runs-dir", str(tmp_path / "runs"), "--workers", "0",
                                    "--device", "cpu", "--max-steps", "1"])
    assert res.exit_code == 0, res.output
    stored = json.loads((tmp_path / "runs" / "mine" / "config.json").read_text())
    assert {k: stored[k] for k in tree} == tree
    assert stored["source"] == {"config": str(cfg), "overrides": {"recipe.epochs": 2}}
    # --epochs is an alias of --set recipe.epochs: the same tree
    alias = CliRunner().invoke(main, ["--config", str(cfg), "--epochs", "2", "--root", str(synth_root), "--print-config"])
    assert yaml.safe_load(alias.output) == tree
    (tmp_path / "bad.yaml").write_text("recipe: [1, 2\n")
    bad = CliRunner().invoke(main, ["--config", str(tmp_path / "bad.yaml"), "--print-config"])
    assert bad.exit_code == 2 and bad.output.startswith("error: the config file") and "not valid YAML" in bad.output
    wrong = CliRunner().invoke(main, ["--config", str(cfg), "--set", "recipe.lr_peak=nan", "--print-config"])
    assert wrong.exit_code == 2 and "recipe.lr_peak=nan is not a finite number" in wrong.output


def test_sigterm_to_the_whole_process_group_saves_a_checkpoint(tmp_path: Path) -> None:
    """A batch scheduler (or `kill -- -PGID`) sends SIGTERM to every process of the job, DataLoader workers
    included: the workers leave it to the main process, which saves and exits like a single SIGTERM."""
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from pathlib import Path
import tests.test_train as tt

class GroupKill(tt.Loss):
    def __call__(self, out, pids):
        if self.calls == 2:
            os.killpg(os.getpgid(0), signal.SIGTERM)
        return super().__call__(out, pids)

trainer = tt.make_trainer(Path({str(tmp_path / 'run')!r}), tt.make_data(Path({str(tmp_path / 'data')!r})),
                          workers=1, loss=GroupKill())
print(trainer.fit()["stopped_by"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "signal", out.stderr[-2000:]
    ckpt = raw_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 3 and not ckpt["complete"]
