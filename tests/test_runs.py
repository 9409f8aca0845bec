"""data.runs: the run folder and checkpoint format (2), format 1 upgraded, other versions refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_run
from data.runs import (FORMAT_VERSION, CheckpointInfo, RunError, RunFolder, check_name, open_checkpoint,
                       load_checkpoint, resolve_checkpoint)
from dsa.errors import UserError
from dsa.model import DSANet, build_dsanet
from dsa.config import get_preset

TINY = get_preset("tiny").model


def test_write_then_read_is_the_same_record(tmp_path: Path) -> None:
    path = write_tiny_run(tmp_path / "r", "two-branch", 5, epoch=3, step=11, complete=False)
    ckpt = load_checkpoint(path)
    assert ckpt.info == CheckpointInfo(model=TINY, variant="two-branch", num_classes=5, preset="tiny",
                                       dataset="market1501", estimator="synthetic", tag=None, input_kind="dsap",
                                       epoch=3, step=11, complete=False, format_version=FORMAT_VERSION)
    assert ckpt.info.input_size == (TINY.height, TINY.width)
    net = build_dsanet(ckpt.info.model, 5, "two-branch", ckpt.model_state)
    assert net.variant == "two-branch"
    assert not list((tmp_path / "r").glob(".*tmp*"))  # written atomically: no temporary left


def test_format_1_checkpoints_are_upgraded(tmp_path: Path) -> None:
    """A checkpoint written before data.runs (model config etc. at the top level) still loads."""
    torch.manual_seed(0)
    net = DSANet(TINY, 4, "dsa")
    old = {"format_version": 1, "model": net.state_dict(), "model_config": TINY.to_dict(), "preset": "tiny",
           "variant": "dsa", "num_classes": 4, "epoch": 2, "step": 9, "complete": True,
           "optimizer": {"state": {}}, "sampler": {"epoch": 2},
           "config": {"dataset": "synthetic", "estimator": "synthetic", "tag": "demo", "model": TINY.to_dict()}}
    torch.save(old, tmp_path / "checkpoint.pt")
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.info.format_version == 1 and ckpt.info.variant == "dsa" and ckpt.info.num_classes == 4
    assert ckpt.info.tag == "demo" and ckpt.info.epoch == 2 and ckpt.info.complete
    assert ckpt.training == {"optimizer": {"state": {}}, "sampler": {"epoch": 2}}
    build_dsanet(ckpt.info.model, 4, "dsa", ckpt.model_state)


@pytest.mark.parametrize("content, sentence", [
    ({"format_version": 4, "model": {}}, "format version 4; this version of the program reads formats 1, 2, 3"),
    ({"format_version": 2, "model": {}, "config": {"variant": "dsa", "num_classes": 3}}, "has no 'model' in its configuration"),
    ({"weights": {}}, "not a checkpoint written by this program"),
    ([1, 2, 3], "not a checkpoint written by this program"),
])
def test_unusable_checkpoints_are_sentences(tmp_path: Path, content, sentence) -> None:
    torch.save(content, tmp_path / "checkpoint.pt")
    with pytest.raises(RunError, match=sentence):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_unreadable_file_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(RunError, match="cannot read the checkpoint") as e:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "\n" not in str(e.value) and "weights_only=False" not in str(e.value)
    with pytest.raises(RunError, match="no checkpoint found for 'nope'"):
        resolve_checkpoint("nope", tmp_path)
    assert issubclass(RunError, UserError)


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ".hidden", "", "x" * 201])
def test_run_names_are_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(RunError, match="not a plain name"):
        RunFolder.named(tmp_path, name)
    assert check_name("demo-dsa_1.2+x") == "demo-dsa_1.2+x"


def test_config_and_log(tmp_path: Path) -> None:
    run = RunFolder.named(tmp_path, "r")
    assert run.read_config() is None and run.read_checkpoint() is None and run.read_log() == []
    run.write_config({"a": 1})
    assert json.loads(run.config_path.read_text()) == {"a": 1} and run.read_config() == {"a": 1}
    for step in (1, 2, 3):
        run.append_log({"step": step})
    with open(run.log_path, "a") as f:
        f.write('{"step": 4, "lo')  # a kill mid-write
    assert [r["step"] for r in run.read_log()] == [1, 2, 3]
    run.trim_log(2)
    assert [r["step"] for r in run.read_log()] == [1, 2]
    run.config_path.write_text("[1]")
    with pytest.raises(RunError, match="not a JSON object"):
        run.read_config()
    assert run.eval_dir("market1501") == tmp_path / "r" / "eval" / "market1501"
