"""`elastic bench`: what memory costs, measured in one process."""
from __future__ import annotations

import click

from elastic_cli.cli.app import EXIT_CODES_HELP, cli
from elastic_cli.cli.model import DTYPE
from elastic_cli.errors import UsageError


BENCH_HELP = """\b
Measure what memory costs, all variants in one process (interleaved, repeated; medians and spread):
train tokens/s and peak memory of every memory kind vs `none`; eval peak memory and time per token
after 4k vs 1M tokens of history; time per generated token after 1k vs 1M tokens; Elastic Memory
kernels vs a plain matmul and a write at a new t vs a seen t (N=64, l=2048); MFU on CUDA.
Ratio keys name the sizes measured (eval_memory_ratio_1M_vs_4k; --quick: _16k_vs_1k).
  elastic bench recipes/tiny.yaml --quick
  elastic bench recipes/tiny.yaml --history 65536 --kinds none,elastic --out bench.json
  elastic bench recipes/code-32k.yaml --device cuda --dtype bf16
KIND.key=value sets an option of one kind's variant only, e.g. xl.cache=32 memorizing.store=256."""


@cli.command("bench", epilog=EXIT_CODES_HELP, help=BENCH_HELP)
@click.argument("words", nargs=-1, metavar="[RECIPE.yaml] [KEY=VALUE]...")
@click.option("--recipe", metavar="RECIPE.yaml", help="Recipe giving the model size, if not given as a word "
              "[default: recipes/tiny.yaml].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available, else cpu.")
@click.option("--dtype", type=DTYPE, help="Precision (train.dtype).")
@click.option("--quick", is_flag=True, help="Few repeats and 1k vs 16k tokens of history: under a minute on a CPU.")
@click.option("--kinds", metavar="K1,K2", help="Only these memory kinds (default: every kind).")
@click.option("--history", type=int, metavar="TOKENS",
              help="Long history for eval and generation (default 1M; --quick 16k), rounded up to whole segments.")
@click.option("--train-steps", type=int, metavar="N", help="Timed train steps per kind (default 100; --quick 3).")
@click.option("--out", "--json", "json_path", metavar="PATH",
              help="Also write every measurement as JSON, after every phase ('-': stdout only, at the end).")
@click.option("--deadline", type=float, metavar="SECONDS",
              help="Skip the phases that would start after SECONDS and cut the train steps to fit a third of them.")
def bench_command(words, recipe, device, dtype, quick, kinds, history, train_steps, json_path, deadline) -> None:
    from elastic_cli.bench import job as bench

    recipes = [w for w in words if "=" not in w]
    overrides = [w for w in words if "=" in w] + [f"train.dtype={dtype}"] * (dtype is not None)
    if len(recipes) + (recipe is not None) > 1:
        raise UsageError("bench takes one recipe (as a word or --recipe)")
    bench.run(bench.BenchOptions(recipe or (recipes[0] if recipes else "recipes/tiny.yaml"), tuple(overrides), device,
                                 quick, json_path, kinds, history, train_steps, deadline))
