"""The commands that use a trained model or measure one: eval, generate, export, lm-eval, bench
(registered on the `elastic` group of cli.py)."""
from __future__ import annotations

import click

from elastic_cli import console
from elastic_cli.cli import EXIT_CODES_HELP, cli
from elastic_cli.errors import UsageError


class Schedule(click.ParamType):
    """memory.schedule values (a comma-separated list when many), checked against the one list,
    memory.sampling.SCHEDULES, when used (importing it at startup would import torch)."""

    name = "schedule"

    def __init__(self, many: bool = False):
        self.many = many

    def convert(self, value, param, ctx):
        from elastic_cli.memory.sampling import SCHEDULES

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
@click.option("--heatmap", "heatmap_path", metavar="PATH.png", help="Haystack task data: draw exact-match accuracy "
              "over document length x depth of the facts; the cells go to PATH.json (and into --json).")
def eval_cmd(ckpt, data_dir, split, schedule, samples, compare, batch_size, max_docs, json_path, plot_path,
             heatmap_path):
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
    heat_file = inference.check_writable(heatmap_path, "--heatmap") if heatmap_path else None
    for f in (plot_file, heat_file):
        if f is not None:
            evaluate.check_plot_available(f)
    report = evaluate.run_eval(ckpt, data_dir, split, schedule, samples, compare or [], batch_size, max_docs,
                               need_depths=heat_file is not None)
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
    if heat_file is not None:
        from elastic_cli import heatmap

        names = evaluate.table_rows(report)[0][1:]
        panels = [(f"{n} ({report['split']})", r["heatmap"]) for n, r in zip(names, report["results"])]
        heatmap.draw(panels, heat_file)
        cells_file = heat_file.with_suffix(".json")
        if cells_file != json_file:  # --json to the same path already holds the cells
            write_atomic(cells_file, (json.dumps(dict(panels), indent=1) + "\n").encode())
        console.info(f"wrote {heat_file} and {cells_file}")


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
train tokens/s and peak memory of every memory kind vs `none`; eval peak memory and time per token
after 4k vs 1M tokens of history; time per generated token after 1k vs 1M tokens; Elastic Memory
kernels vs a plain matmul and a write at a new t vs a seen t (N=64, l=2048); MFU on CUDA.
Ratio keys name the sizes measured (eval_memory_ratio_1M_vs_4k; --quick: _16k_vs_1k).
  elastic bench --recipe recipes/tiny.yaml --quick
  elastic bench --recipe recipes/tiny.yaml --history 65536 --kinds none,elastic --json bench.json
KIND.key=value sets an option of one kind's variant only, e.g. xl.cache=32 memorizing.store=256."""


@cli.command("bench", epilog=EXIT_CODES_HELP, help=BENCH_HELP)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--recipe", default="recipes/tiny.yaml", show_default=True, help="Recipe giving the model size.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available, else cpu.")
@click.option("--quick", is_flag=True, help="Few repeats and 1k vs 16k tokens of history: under a minute on a CPU.")
@click.option("--kinds", metavar="K1,K2", help="Only these memory kinds (default: every kind).")
@click.option("--history", type=int, metavar="TOKENS",
              help="Long history for eval and generation (default 1M; --quick 16k), rounded up to whole segments.")
@click.option("--train-steps", type=int, metavar="N", help="Timed train steps per kind (default 100; --quick 3).")
@click.option("--json", "json_path", metavar="PATH", help="Also write every measurement as JSON ('-': stdout only).")
def bench_command(overrides, recipe, device, quick, kinds, history, train_steps, json_path) -> None:
    from elastic_cli import bench

    bench.run(recipe, list(overrides), device, quick, json_path, kinds, history, train_steps)
