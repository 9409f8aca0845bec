"""The ``dsa-reid`` console command: declared in setup.cfg, dispatching to the stages' own commands; device
``auto`` and the default workers on a machine without CUDA; ``$DSA_ROOT`` read by every ``--root``."""
from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import write_tiny_run
from dsa_reid.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_setup_cfg_installs_the_console_command() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = [ln.strip() for ln in cfg["options.entry_points"]["console_scripts"].splitlines() if ln.strip()]
    assert scripts == ["dsa-reid = dsa_reid.cli:main"]
    assert "dsa_reid" in cfg["options.packages.find"]["include"].split()


def test_every_sub_command_has_help_and_is_the_stage_command() -> None:
    import importlib

    res = CliRunner().invoke(main, ["-h"])
    assert res.exit_code == 0 and all(name in res.output for name in COMMANDS)
    for name, (module, attr, _) in COMMANDS.items():
        res = CliRunner().invoke(main, [name, "-h"])
        assert res.exit_code == 0, (name, res.output)
        assert main.get_command(None, name) is getattr(importlib.import_module(module), attr)
    for expected in ("precompute", "train", "eval", "search", "inspect"):
        assert expected in COMMANDS


def test_user_errors_through_the_entry_point_are_sentences(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["search", "--run", str(tmp_path / "none"), "--query", "q", "--gallery", "g"])
    assert res.exit_code == 2 and res.output.startswith("error: no checkpoint found"), res.output
    res = CliRunner().invoke(main, ["train", "--dataset", "synthetic", "--root", str(tmp_path), "--run", "r",
                                    "--runs-dir", str(tmp_path), "--set", "recipe.nope=1"])
    assert res.exit_code == 2 and "the known keys are" in res.output, res.output


def test_eval_export_through_the_entry_point(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    write_tiny_run(tmp_path / "r")
    res = CliRunner().invoke(main, ["export", "--run", str(tmp_path / "r"), "--no-check"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "model-mf.json").read_text())["input"]["dtype"] == "float32"


def test_device_auto_is_the_cpu_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data.runtime import default_workers, resolve_device
    from evaluate.api import ReidModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    write_tiny_run(tmp_path / "r")
    model = ReidModel.from_run(tmp_path / "r")  # no device given: auto
    assert model.device == torch.device("cpu")
    assert default_workers("cpu") <= 2 and default_workers(torch.device("cpu")) >= 0
    assert 1 <= default_workers("cuda") <= 8
    import inspect

    from evaluate.report import evaluate_run
    from train.run import RunOptions

    assert inspect.signature(ReidModel.from_run).parameters["device"].default == "auto"
    assert inspect.signature(evaluate_run).parameters["device"].default == "auto"
    assert RunOptions(run_name="y").device == "auto"


@pytest.mark.parametrize("argv", [
    ["data", "stats", "--dataset", "synthetic"],
    ["precompute", "run", "--dataset", "synthetic", "--estimator", "synthetic"],
    ["inspect", "--dataset", "synthetic", "--estimator", "synthetic"],
    ["train", "--dataset", "synthetic", "--run", "r", "--device", "cpu"],
    ["eval", "run", "--run", "RUNDIR", "--dataset", "synthetic", "--device", "cpu"],
])
def test_every_root_option_reads_dsa_root(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command run with no --root looks for its data under $DSA_ROOT (the error names the folder)."""
    root = tmp_path / "my-data-root"
    root.mkdir()
    write_tiny_run(tmp_path / "run")
    monkeypatch.setenv("DSA_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    argv = [str(tmp_path / "run") if a == "RUNDIR" else a for a in argv]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2, res.output
    assert str(root) in res.output and "Traceback" not in res.output, res.output
