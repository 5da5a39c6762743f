"""The `elastic` command line. Each command parses its arguments, loads config and calls one function.

Only this module knows click. Errors raised as `ElasticError` become one line on stderr and the
documented exit code (see EXIT_CODES_HELP); anything else is a bug and exits 1 with a traceback.
"""

from __future__ import annotations

import sys

import click

from elastic_cli import __version__, console
from elastic_cli.errors import EXIT_INTERRUPTED, EXIT_USAGE, ElasticError, UsageError

EXIT_CODES_HELP = """\b
Exit codes:
  0   ok
  1   unexpected error (a bug: please report the traceback)
  2   usage or config error
  3   bad data, tokenizer or incompatible checkpoint
  4   training diverged (NaN/inf loss); the last good checkpoint is kept
  75  preempted (SIGTERM/SIGUSR1) after writing a complete checkpoint
  130 interrupted (Ctrl-C)
"""


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="elastic")
def cli() -> None:
    """elastic: train and run language models with Elastic Memory on long documents."""


@cli.group()
def tokenizer() -> None:
    """Train and inspect SentencePiece tokenizers."""


@tokenizer.command("train")
@click.argument("sources", nargs=-1)
@click.option("--corpus", type=click.Choice(["python-stdlib"]), help="A built-in corpus (no download).")
@click.option("--vocab-size", type=int, required=True, help="Pieces in the model (8000 for the shipped ones).")
@click.option("--out", required=True, help="Path of the .model file to write.")
@click.option("--kind", type=click.Choice(["books", "code"]), default="books", show_default=True)
@click.option("--sample", type=int, default=1_000_000, show_default=True, help="Lines sampled (reservoir) for training.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def tokenizer_train(sources, corpus, vocab_size, out, kind, sample, seed, force) -> None:
    """Train a tokenizer on a line sample of SOURCES (files, .gz, folders).

    \b
    Example: elastic tokenizer train ~/books --vocab-size 8000 --out my-tokenizers/books-8k.model
    """
    from elastic_cli.data.tokenizer import train_from_sources

    tok, lines = train_from_sources(list(sources), vocab_size, out, kind, sample, seed, corpus, force)
    console.info(f"wrote {out}: {tok.vocab_size} pieces from {lines} sampled lines, sha256 {tok.sha256[:12]}")


@cli.command()
@click.argument("sources", nargs=-1)
@click.option("--tokenizer", "tokenizer_path", required=True, help="SentencePiece .model (see tokenizers/).")
@click.option("--out", required=True, help="Directory to write (built in DIR.tmp-<pid>, then renamed).")
@click.option("--repos", is_flag=True, help="Each subfolder of a source folder is a repository: one document.")
@click.option("--corpus", type=click.Choice(["python-stdlib"]), help="A built-in corpus (no download).")
@click.option("--min-tokens", type=int, default=1, show_default=True, help="Drop shorter documents.")
@click.option("--val-frac", type=float, default=0.05, show_default=True)
@click.option("--test-frac", type=float, default=0.05, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "uint16", "uint32"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if --out holds other input.")
@click.option("--workers", type=int, default=None, help="Encoding processes (default: up to 2 cores).")
@click.option("--task", type=click.Choice(["passkey", "recall", "sorting", "mqar"]), help="Generate a synthetic task instead.")
@click.option("--length", type=int, help="Task document length in tokens.")
@click.option("--count", type=int, help="Number of task documents.")
@click.option("--seed", type=int, default=0, show_default=True, help="Task generator seed.")
@click.option("--pairs", type=int, help="mqar: key-value pairs per document [8].")
@click.option("--queries", type=int, help="mqar: pairs asked again later, each an answer span [all pairs].")
@click.option("--distance", "distance", callback=lambda c, p, v: _range(v), help="mqar: segments between a fact "
              "and its query, A:B [0:any]; 0:0 = same segment (the control), 2:7 = only memory can answer.")
@click.option("--segment-len", type=int, help="mqar: the segment length distances are counted in [64].")
@click.option("--keys", type=int, help="mqar: key words to draw from [64].")
@click.option("--values", type=int, help="mqar: value words to draw from [64]; chance is 1/VALUES.")
@click.option("--noise", type=int, help="mqar: noise words between facts and queries [256]; 1 = one filler word.")
def prepare(sources, tokenizer_path, out, repos, corpus, min_tokens, val_frac, test_frac, dtype, force,
            workers, task, length, count, seed, pairs, queries, distance, segment_len, keys, values, noise) -> None:
    """Tokenize SOURCES (text files, .gz, folders, repositories) into memmap shards in --out.

    \b
    Examples:
      elastic prepare --corpus python-stdlib --tokenizer tokenizers/code-8k.model --out data/stdlib
      elastic prepare ~/books --tokenizer tokenizers/books-8k.model --out data/books
      elastic prepare --task passkey --length 4096 --count 200 --tokenizer tokenizers/books-8k.model --out data/passkey
      elastic prepare --task mqar --length 512 --count 4000 --pairs 8 --distance 2:7 --segment-len 64 \\
          --tokenizer tokenizers/code-8k.model --out data/mqar-far
    """
    task_options = {"pairs": pairs, "queries": queries, "distance": distance, "segment_len": segment_len,
                    "keys": keys, "values": values, "noise": noise}
    if task is not None:
        from elastic_cli.data.tasks import prepare_task

        if sources or corpus or repos:
            raise UsageError("--task takes no SOURCES, --corpus or --repos")
        if length is None or count is None:
            raise UsageError("--task needs --length and --count")
        prepare_task(task, length, count, tokenizer_path, out, seed, val_frac, test_frac, dtype, force, task_options)
        return
    if length is not None or count is not None or any(v is not None for v in task_options.values()):
        raise UsageError("--length, --count and the mqar options only apply with --task")
    from elastic_cli.data.prepare import prepare as run_prepare

    run_prepare(list(sources), tokenizer_path, out, repos, min_tokens, val_frac, test_frac, dtype, force,
                corpus, workers)

TRAIN_HELP = """\b
Train from RECIPE.yaml files (later files are overlays) and key=value overrides:
  elastic train recipes/tiny.yaml
  elastic train recipes/tiny.yaml recipes/memory/none.yaml train.lr=1e-3
  elastic train recipes/code-32k.yaml --gpus 8 --resume auto
The run directory is run.dir (default runs/<recipe names>)."""


@cli.command("train", epilog=EXIT_CODES_HELP, help=TRAIN_HELP)
@click.argument("args", nargs=-1, required=True, metavar="RECIPE.yaml... [KEY=VALUE]...")
@click.option("--gpus", type=click.IntRange(min=1), help="Processes per node (run.gpus), launched through torchrun "
              "with DDP. On a CPU-only machine, N gloo processes.")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes (run.nodes); needs --rdzv-endpoint outside SLURM.")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="torchrun rendezvous for --nodes > 1 "
              "(default under SLURM: first node of the job, port 29500).")
@click.option("--resume", default="never", show_default=True, metavar="auto|never|PATH",
              help="auto: continue from the newest complete checkpoint of run.dir, if any; PATH: a run or checkpoint directory.")
@click.option("--overwrite", is_flag=True, help="Start over in a non-empty run directory (deletes its run files).")
@click.option("--dry-run", is_flag=True, help="Validate, build the model on the meta device, print sizes, a memory "
              "estimate and the launch command, then exit.")
def train_command(args, gpus, nodes, rdzv_endpoint, resume, overwrite, dry_run) -> None:
    from elastic_cli import launch
    from elastic_cli.config import load_config, split_args

    recipes, overrides = split_args(args)
    overrides += [f"run.gpus={gpus}"] * (gpus is not None) + [f"run.nodes={nodes}"] * (nodes is not None)
    cfg = load_config(recipes, overrides)
    worker_argv = ["train", *recipes, *overrides, "--resume", resume] + ["--overwrite"] * overwrite
    code = launch.run(cfg, worker_argv, resume, overwrite, dry_run, rdzv_endpoint)
    if code:
        raise click.exceptions.Exit(code)


@cli.group("config")
def config_group() -> None:
    """Inspect recipes."""


@config_group.command("show")
@click.argument("args", nargs=-1, required=True, metavar="RECIPE.yaml... [KEY=VALUE]...")
def config_show(args) -> None:
    """Print the resolved config (recipes, their bases, overrides and defaults) as YAML on stdout."""
    from elastic_cli.config import dump_yaml, load_config, split_args

    console.out(dump_yaml(load_config(*split_args(args))), end="")


def _range(value: str | None) -> tuple[int, int] | None:
    """'A:B' (or 'A') -> (A, B) whole numbers."""
    if value is None:
        return None
    lo, _, hi = value.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise UsageError(f"--distance takes A:B in whole segments (e.g. 2:7), got {value!r}") from None


class Schedule(click.ParamType):
    """memory.schedule values (a comma-separated list when many), checked against the one list,
    memory.hippo.SCHEDULES, when used (importing it at startup would import torch)."""

    name = "schedule"

    def __init__(self, many: bool = False):
        self.many = many

    def convert(self, value, param, ctx):
        from elastic_cli.memory.hippo import SCHEDULES

        names = [v.strip() for v in value.split(",") if v.strip()] if self.many else [value]
        bad = [n for n in names if n not in SCHEDULES]
        if bad or not names:
            flag = param.opts[0] if param is not None else "schedule"
            raise UsageError(f"{flag}: unknown schedule(s) {', '.join(bad) or repr(value)}; choose from {', '.join(SCHEDULES)}")
        return names if self.many else value


@cli.command("eval", epilog=EXIT_CODES_HELP)
@click.option("--ckpt", required=True, metavar="RUN_OR_CHECKPOINT",
              help="A run directory (its newest complete checkpoint) or a checkpoint directory.")
@click.option("--data", "data_dir", metavar="DIR", help="Prepared data (default: the run's data.path).")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="Which documents (default: the run's eval.split, usually val).")
@click.option("--schedule", "--sampling", "schedule", type=Schedule(), metavar="NAME",
              help="Elastic Memory read schedule (memory.schedule) at test time: the same weights load.")
@click.option("--samples", type=click.IntRange(min=1), metavar="M", help="Memory samples M read by attention.")
@click.option("--compare-schedules", "--compare-sampling", "compare", type=Schedule(many=True), metavar="A,B,..",
              help="Evaluate each read schedule in one run, side by side, e.g. uniform,exponential,gauss.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Documents read together (default: eval.batch).")
@click.option("--max-docs", type=click.IntRange(min=1),
              help="Only the first N documents of the split (default: eval.max_batches x batch size, or all).")
@click.option("--json", "json_path", metavar="PATH", help="Write the results as JSON to PATH ('-' for stdout).")
@click.option("--plot", "plot_path", metavar="PATH.png", help="Draw loss by segment index (needs matplotlib); "
              "the suffix names the format (.png, .pdf, .svg, .jpg, ...).")
def eval_cmd(ckpt, data_dir, split, schedule, samples, compare, batch_size, max_docs, json_path, plot_path):
    """Perplexity, bits per byte, loss by segment index, exact match, tokens/s and peak memory.

    Whole documents are read in order with memory carried through each one; the numbers (all
    but tokens/s and memory) are deterministic. Peak memory is CUDA max allocated on a GPU and
    the process's peak RSS on CPU (the output says which).
    """
    import json

    from elastic_cli import evaluate, inference
    from elastic_cli.atomic import write_atomic

    json_file = inference.check_writable(json_path, "--json") if json_path not in (None, "-") else None
    plot_file = inference.check_writable(plot_path, "--plot") if plot_path else None
    if plot_file is not None:
        evaluate.check_plot_available(plot_file)
    report = evaluate.run_eval(ckpt, data_dir, split, schedule, samples, compare or [], batch_size, max_docs)
    text = json.dumps(report, indent=1)
    if json_path == "-":
        console.out(text)
    elif json_file is not None:
        write_atomic(json_file, (text + "\n").encode())
        console.info(f"wrote {json_file}")
    if json_path != "-":
        columns, rows = evaluate.table_rows(report)
        console.table(f"eval {report['split']} of {report['data']}", columns, rows)
    if plot_file is not None:
        evaluate.plot_curves(report, plot_file)
        console.info(f"wrote {plot_file}")


@cli.command("generate", epilog=EXIT_CODES_HELP)
@click.argument("stdin", required=False, metavar="[-]", type=click.Choice(["-"]))
@click.option("--ckpt", required=True, metavar="RUN_OR_CHECKPOINT", help="A run or checkpoint directory.")
@click.option("--prompt", help="The prompt text.")
@click.option("--file", "file", metavar="PATH", help="Read the prompt from a UTF-8 file ('-' for stdin).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True, help="0 = greedy (argmax).")
@click.option("--top-k", type=int, help="Keep the k most likely tokens (applied first).")
@click.option("--top-p", type=float, default=1.0, show_default=True,
              help="Nucleus: keep the smallest set of tokens with probability >= p, in (0, 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same output.")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--schedule", "--sampling", "schedule", type=Schedule(), metavar="NAME",
              help="Elastic Memory read schedule (memory.schedule) at test time.")
@click.option("--output", metavar="FILE.jsonl", help="Also write one JSON object per sample to this file.")
def generate_cmd(stdin, ckpt, prompt, file, max_new_tokens, temperature, top_k, top_p, seed, num_samples,
                 schedule, output):
    """Continue a prompt, streaming tokens to stdout.

    A long --file (a whole book or repository) is read into memory segment by segment: each
    full segment is folded into the model's memory and its KV cache dropped, so memory use and
    time per generated token do not grow with the file's length. Store-based kinds (xl,
    memorizing, melodi) keep a fixed-capacity store (memory.cache, memory.store, memory.long_store):
    their cost grows with the store's capacity, never past it. Filters apply in the order
    top-k, temperature, top-p (as in litgpt); --temperature 0 is greedy decoding.
    """
    from elastic_cli import generate, inference
    from elastic_cli.decoding import DecodingOptions, check_options

    opts = check_options(DecodingOptions(temperature, top_k, top_p))
    if stdin is not None:
        if file is not None:
            raise UsageError("give either - (stdin) or --file, not both")
        file = "-"
    out_file = inference.check_writable(output, "--output") if output else None
    text = generate.read_prompt(prompt, file)
    generate.run_generate(ckpt, text, max_new_tokens, opts, seed, num_samples, schedule, out_file)


@cli.command("export", epilog=EXIT_CODES_HELP)
@click.option("--ckpt", required=True, metavar="RUN_OR_CHECKPOINT", help="A run or checkpoint directory.")
@click.option("--out", required=True, metavar="DIR", help="Folder to write (built beside it, then renamed).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
def export_cmd(ckpt, out, overwrite) -> None:
    """Write a Hugging Face folder: AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True).

    \b
    Example: elastic export --ckpt runs/tiny --out hf/tiny   (needs: pip install 'elastic-cli[hf]')
    """
    from elastic_cli.export.writer import export

    console.info(f"wrote {export(ckpt, out, overwrite)}")


@cli.command("lm-eval", epilog=EXIT_CODES_HELP)
@click.option("--ckpt", required=True, metavar="RUN_OR_CHECKPOINT", help="A run or checkpoint directory.")
@click.option("--tasks", required=True, metavar="A,B,..", help="Harness task names (or local ones, see --data).")
@click.option("--data", "data_dir", metavar="DIR", help="Prepared data as local tasks: elastic_docs (whole documents, "
              "rolling); task data adds elastic_answer (generation) and elastic_answer_ll.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Documents of --data (default: eval.split).")
@click.option("--include-path", metavar="DIR", help="A folder of your own task YAMLs.")
@click.option("--limit", type=float, help="Documents per task (a fraction if < 1).")
@click.option("--num-fewshot", type=click.IntRange(min=0))
@click.option("--model-args", metavar="K=V,..", help="schedule=, samples=, seed=, document_end=true (score EOS too).")
@click.option("--bootstrap-iters", type=click.IntRange(min=0), default=100000, show_default=True)
@click.option("--json", "json_path", metavar="PATH", help="Also write the results as JSON.")
def lm_eval_cmd(ckpt, tasks, data_dir, split, include_path, limit, num_fewshot, model_args, bootstrap_iters,
                json_path) -> None:
    """Score a checkpoint with lm-evaluation-harness tasks, whole texts through memory (never truncated).

    \b
    Needs: pip install 'elastic-cli[lm-eval]'. Examples:
      elastic lm-eval --ckpt runs/tiny --data data/stdlib --tasks elastic_docs
      elastic lm-eval --ckpt runs/tiny --tasks wikitext --json lm-eval.json
    """
    from elastic_cli import inference
    from elastic_cli.lm_eval_tasks import run_lm_eval

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    json_file = inference.check_writable(json_path, "--json") if json_path else None
    run_lm_eval(ckpt, names, data_dir, split, include_path, limit, num_fewshot, model_args, bootstrap_iters, json_file)


BENCH_HELP = """\b
Measure what memory costs, all variants in one process (interleaved, repeated; medians and spread):
train tokens/s of every memory kind vs `none`, peak memory at 4k vs 64k tokens of history, time per
generated token after 1k vs 64k tokens, Elastic Memory kernels vs a plain matmul, MFU on CUDA.
  elastic bench --recipe recipes/tiny.yaml --quick
  elastic bench --recipe recipes/tiny.yaml memory.order=32 memory.samples=32 --json bench.json
KIND.key=value sets an option of one kind's variant only, e.g. xl.cache=32 memorizing.store=256."""


@cli.command("bench", epilog=EXIT_CODES_HELP, help=BENCH_HELP)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--recipe", default="recipes/tiny.yaml", show_default=True, help="Recipe giving the model size.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available, else cpu.")
@click.option("--quick", is_flag=True, help="Few repeats and 1k vs 16k tokens of history: under a minute on a CPU.")
@click.option("--json", "json_path", metavar="PATH", help="Also write every measurement as JSON ('-': stdout only).")
def bench_command(overrides, recipe, device, quick, json_path) -> None:
    from elastic_cli import bench

    bench.run(recipe, list(overrides), device, quick, json_path)


def main() -> None:
    """Console entry point: maps ElasticError to its exit code without a traceback. Commands that
    end with a code (a launched torchrun job's 75, 130, ...) return it through click; it is the exit code.
    A launched worker also leaves its code for the launcher (`distributed.record_exit`)."""
    code = _run()
    if code:
        from elastic_cli.distributed import record_exit

        record_exit(code)
    sys.exit(code)


def _run() -> int:
    try:
        code = cli.main(standalone_mode=False, prog_name="elastic")
    except click.exceptions.Abort:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except click.UsageError as e:  # bad flag, missing argument: one line, like every other error
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
        console.error(" ".join(e.format_message().split()) + hint)
        return EXIT_USAGE
    except click.ClickException as e:
        console.error(" ".join(e.format_message().split()))
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except ElasticError as e:
        console.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else 0
