"""`elastic train` and `elastic config`: commands on recipes and runs."""
from __future__ import annotations

import click

from elastic_cli import console
from elastic_cli.cli.app import EXIT_CODES_HELP, cli, help_without_command


TRAIN_HELP = """\b
Train from RECIPE.yaml files (later files are overlays) and key=value overrides:
  elastic train recipes/tiny.yaml
  elastic train recipes/tiny.yaml recipes/memory/none.yaml train.lr=1e-3
  elastic train recipes/tiny.yaml train.steps=10 --dry-run
  elastic train recipes/code-32k.yaml --gpus 8 --resume auto
The run directory is run.dir; by default runs/<recipe names>, plus --KEY-VALUE for each override
that changes the configuration (runs/tiny-none--train.lr-1e-3), so runs of different configurations
never share one. It is printed at the start; --overwrite replaces a run of the same configuration only."""


@cli.command("train", epilog=EXIT_CODES_HELP, help=TRAIN_HELP)
@click.argument("args", nargs=-1, required=True, metavar="RECIPE.yaml... [KEY=VALUE]...")
@click.option("--gpus", type=click.IntRange(min=1), help="Processes per node (run.gpus), launched through torchrun "
              "with DDP. On a CPU-only machine, N gloo processes.")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes (run.nodes); needs --rdzv-endpoint outside SLURM.")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="torchrun rendezvous for --nodes > 1 "
              "(default under SLURM: first node of the job, port 29500).")
@click.option("--resume", default="never", show_default=True, metavar="auto|never|PATH",
              help="auto: continue from the newest complete checkpoint of run.dir, if any; PATH: a run or checkpoint directory.")
@click.option("--overwrite", is_flag=True, help="Start over in a non-empty run directory of the same configuration "
              "(deletes its run files and says which).")
@click.option("--dry-run", is_flag=True, help="Run every check the real run runs that needs no hardware (data, "
              "tokenizer, run directory, the checkpoint to resume and its architecture), build the model on the meta "
              "device, print sizes, a memory estimate and the launch command (one line), then exit. Plans --gpus N "
              "jobs on a machine without GPUs.")
def train_command(args, gpus, nodes, rdzv_endpoint, resume, overwrite, dry_run) -> None:
    from elastic_cli.config import load_config, split_args
    from elastic_cli.train import job

    recipes, overrides = split_args(args)
    overrides += [f"run.gpus={gpus}"] * (gpus is not None) + [f"run.nodes={nodes}"] * (nodes is not None)
    cfg = load_config(recipes, overrides)
    worker_argv = ("train", *recipes, *overrides, "--resume", resume) + ("--overwrite",) * overwrite
    code = job.run(job.TrainOptions(cfg, resume, overwrite, dry_run, rdzv_endpoint, worker_argv))
    if code:
        raise click.exceptions.Exit(code)


@cli.group("config", invoke_without_command=True)
@click.pass_context
def config_group(ctx: click.Context) -> None:
    """Inspect recipes."""
    help_without_command(ctx)


@config_group.command("show")
@click.argument("args", nargs=-1, required=True, metavar="RECIPE.yaml... [KEY=VALUE]...")
@click.option("--explain", is_flag=True, help="Add each key's description as a comment.")
def config_show(args, explain) -> None:
    """Print the resolved config (recipes, their bases, overrides and defaults) as YAML on stdout.

    \b
    Examples:
      elastic config show recipes/tiny.yaml --explain
      elastic config show recipes/tiny.yaml recipes/memory/xl.yaml memory.cache=32
    """
    from elastic_cli.config import dump_yaml, load_config, split_args

    console.out(dump_yaml(load_config(*split_args(args)), explain), end="")
