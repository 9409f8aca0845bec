"""``python -m train``: train (or resume) a DSA-reID run in ``runs/<RUN>/``.

Single process by default; under ``torchrun --nproc-per-node N -m train ... --run-name RUN`` the same
command trains with DistributedDataParallel (spell the run option ``--run-name`` there: torchrun's own
parser reads ``--run`` as an abbreviation of its ``--run-path``).  Rerunning the same command on an existing run resumes it exactly.
Errors a user can fix are one sentence on stderr and exit status 2.
"""
from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import click

from data.console import CONTEXT, Command, root_option
from data.runtime import quiet_openmp

quiet_openmp()  # before torch starts: OMP_WAIT_POLICY=PASSIVE unless set (data.runtime)

from .run import ALIASES, FLAG_ALIASES, RunOptions, resolve, train_run  # noqa: E402

log = logging.getLogger("train")


def _presets() -> str:
    from dsa.config import preset_names

    return ", ".join(preset_names())


@click.command(cls=Command, context_settings=CONTEXT)
@click.option("--config", "--preset", "config", default="small",
              help=f"The configuration: a preset ({_presets()}; dsa/configs/NAME.yaml) or a YAML file, "
                   "which may start from a preset with `_base_: NAME`.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a configuration field, e.g. --set recipe.lr_peak=3.5e-4 --set model.height=384 "
                   "(repeatable, applied last; recorded in config.json; a resumed run must keep them).")
@click.option("--print-config", is_flag=True,
              help="Print the resolved configuration (YAML, usable as --config) and exit without training.")
@click.option("--run", "--run-name", "run_name", default=None,
              help="Run name: outputs go to RUNS_DIR/RUN/ (under torchrun use --run-name: torchrun "
                   "takes --run for its own --run-path).")
@root_option()
@click.option("--dataset", multiple=True, help="Alias of --set data.dataset=NAME (a registered dataset, options as "
              "name:key=value,...); A+B, or the option repeated, trains on the union of their training splits.")
@click.option("--estimator", multiple=True, help="Alias of --set data.estimator=NAME: whose DSAP store to read (for a "
              "union: one for all, or one per dataset as A+B or repeated).")
@click.option("--tag", multiple=True, help="Alias of --set data.tag=TAG: the store ROOT/dsap/<dataset>/<estimator>-<tag> "
              "(for a union: one for all, or one per dataset, `none` for no tag).")
@click.option("--input", "input_kind", default=None, type=click.Choice(["dsap", "csa"]),
              help="Alias of --set data.input=KIND: dense (DSAP) or coarse (CSA, Table 4) part images.")
@click.option("--variant", default=None,
              type=click.Choice(["dsa", "baseline", "two-branch", "dsa-global", "dsa-local", "dsa-concat"]),
              help="Alias of --set variant=NAME.")
@click.option("--pretrained", default=None, help="Alias of --set pretrained=WEIGHTS: none, imagenet or a file path.")
@click.option("--seed", default=None, type=int, help="Alias of --set seed=N.")
@click.option("--epochs", default=None, type=int, help="Alias of --set recipe.epochs=N.")
@click.option("--batch-p", default=None, type=int, help="Alias of --set recipe.batch_p=P.")
@click.option("--batch-k", default=None, type=int, help="Alias of --set recipe.batch_k=K.")
@click.option("--no-random-erasing", is_flag=True, help="Alias of --set recipe.random_erasing=0 (Table 3 baselines).")
@click.option("--no-label-smoothing", is_flag=True, help="Alias of --set recipe.label_smoothing=0 (Table 3 baselines).")
@click.option("--init", default=None, metavar="RUN_OR_CHECKPOINT",
              help="Start from another run's weights (fine-tuning): its MF-Stream, its DSAG-Stream where the "
                   "shapes fit, new classifiers; recorded in config.json.")
@click.option("--max-steps", default=None, type=click.IntRange(min=1),
              help="Stop (with a checkpoint) after this many steps in total; rerun to continue.")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="DataLoader worker processes [default: up to 8 on a GPU, up to 2 on a CPU].")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--threads", default=0, type=click.IntRange(min=0),
              help="Intra-op CPU threads (0: the available cores minus --workers, at least 1).")
@click.option("--amp/--no-amp", default=True, help="Mixed precision (CUDA only).")
@click.option("--amp-dtype", default="float16", show_default=True, type=click.Choice(["float16", "bfloat16"]),
              help="Autocast dtype: float16 with loss scaling, or bfloat16 (Ampere and later GPUs, no scaling).")
@click.option("--compile/--no-compile", "compile", default=False, show_default=True,
              help="torch.compile the network for training (first steps slower while it compiles; "
                   "checkpoints are the same).")
@click.option("--deterministic", is_flag=True, help="Deterministic kernels (bitwise-reproducible, slower).")
@click.option("--runs-dir", default="runs", type=click.Path(file_okay=False))
@click.option("--log-every", default=10, type=click.IntRange(min=1), help="Steps between log.jsonl records.")
@click.option("--tensorboard", is_flag=True, help="Also log losses and the learning rate to RUNS_DIR/RUN/tensorboard (needs the tensorboard "
                   "extra; view with `tensorboard --logdir RUNS_DIR`).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool, print_config: bool, **kwargs: Any) -> None:
    """Train (or resume) the two-stream DSA-reID network: the configuration is a preset or a config file
    (--config), then --set overrides; the other options say where and how it runs."""
    import os

    from dsa.config import dump_yaml

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    aliases = {k: kwargs.pop(k) for k in (*ALIASES, *FLAG_ALIASES)}
    for name in ("dataset", "estimator", "tag"):  # repeated: one per dataset of a union, as A+B
        aliases[name] = "+".join(aliases[name]) or None
    options = RunOptions(**{**kwargs, "run_name": kwargs["run_name"] or ""}, aliases=aliases)
    if print_config:
        click.echo(dump_yaml(resolve(options)), nl=False)
        return
    if not options.run_name:
        raise click.UsageError("Missing option '--run' (the run name), or use --print-config.")
    summary = train_run(options)
    if summary.get("stopped_by") == "signal":
        signum = int(summary.get("signal") or 15)
        click.echo(f"stopped by {signal.Signals(signum).name}: checkpoint saved at step {summary['step']} in "
                   f"{Path(options.runs_dir) / options.run_name}; rerun the same command to resume", err=True)
        raise SystemExit(128 + signum)  # non-zero, as a shell reports a signal: a scheduler requeues the run


if __name__ == "__main__":
    main()
