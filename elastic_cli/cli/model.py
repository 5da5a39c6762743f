"""The commands that use a trained model: eval, generate, export, lm-eval (registered on the
`elastic` group of app.py). Each parses its words, builds its job's options and calls the job.

One convention: the checkpoint (a run or checkpoint directory) is the first positional word (`--ckpt`
still works), `KEY=VALUE` words set inference-time options (inference.INFERENCE_KEYS), outputs are
`--out` (the old `--json`/`--output` still work), `--device`/`--dtype` choose where and how it runs."""
from __future__ import annotations

import re

import click

from elastic_cli import console
from elastic_cli.cli.app import EXIT_CODES_HELP, cli
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


KEY_VALUE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")  # section.key=value (a prompt like "x = 1" is not one)
DEVICE = click.Choice(["auto", "cpu", "cuda"])
DTYPE = click.Choice(["auto", "fp32", "bf16"])


def _split_words(words: tuple[str, ...], ckpt: str | None, command: str) -> tuple[str, list[str], list[str]]:
    """Positional words -> (checkpoint, key=value overrides, the other words). The checkpoint is
    --ckpt or else the first word that is not key=value."""
    overrides = [w for w in words if KEY_VALUE.match(w)]
    rest = [w for w in words if not KEY_VALUE.match(w)]
    if ckpt is None:
        if not rest:
            raise UsageError(f"give the checkpoint: elastic {command} RUN_OR_CHECKPOINT (see: elastic {command} --help)")
        ckpt, rest = rest[0], rest[1:]
    return ckpt, overrides, rest


def _settings(overrides, device, dtype, tokenizer=None):
    from elastic_cli.runs.inference import Settings

    return Settings(tuple(overrides), device, dtype, tokenizer)


def _common(f):
    """--ckpt, --device, --dtype and --tokenizer: what every command on a trained model takes."""
    f = click.option("--tokenizer", metavar="PATH", help="The tokenizer (default: the copy the checkpoint carries; "
                     "for checkpoints saved before they carried one, the run's data.tokenizer).")(f)
    f = click.option("--dtype", type=DTYPE, help="Precision (train.dtype): auto = bf16 autocast on CUDA, fp32 on CPU.")(f)
    f = click.option("--device", type=DEVICE, help="Where to run (default auto: CUDA if visible, else CPU, "
                     "whatever device trained the run).")(f)
    f = click.option("--ckpt", metavar="RUN_OR_CHECKPOINT", help="The checkpoint, if not given as the first word.")(f)
    return f


EVAL_HELP = """Perplexity, bits per byte, loss by segment index, exact match, tokens/s and peak memory.

Whole documents are read in order with memory carried through each one; the numbers (all
but tokens/s and memory) are deterministic. Peak memory is CUDA max allocated on a GPU and
the process's peak RSS on CPU (the output says which). On language data it also scores every
segment with empty memory for the long-context gain (twice the time; --no-gain skips it).

\b
Examples:
  elastic eval runs/tiny
  elastic eval runs/tiny --device cpu --out results/tiny.json --plot loss-by-segment.png
  elastic eval runs/tiny --split test --max-docs 20 --no-gain
  elastic eval runs/tiny memory.schedule=exponential eval.batch=4
  elastic eval runs/tiny --compare-schedules uniform,exponential,gauss
"""


@cli.command("eval", epilog=EXIT_CODES_HELP, help=EVAL_HELP)
@click.argument("words", nargs=-1, metavar="RUN_OR_CHECKPOINT [KEY=VALUE]...")
@_common
@click.option("--data", "data_dir", metavar="DIR", help="Prepared data (default: the run's data.path).")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="Which documents (default: the run's eval.split, usually val).")
@click.option("--schedule", "--sampling", "schedule", type=Schedule(), metavar="NAME",
              help="Elastic Memory read schedule (memory.schedule) at test time: the same weights load.")
@click.option("--samples", type=click.IntRange(min=1), metavar="M", help="Memory samples M read by attention.")
@click.option("--compare-schedules", "--compare-sampling", "compare", type=Schedule(many=True), metavar="A,B,..",
              help="Evaluate each read schedule in one run, side by side, e.g. uniform,exponential,gauss.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Documents read together (default: eval.batch).")
@click.option("--max-docs", "--limit", "max_docs", type=click.IntRange(min=1),
              help="Only the first N documents of the split (default: eval.max_batches x batch size, or all).")
@click.option("--no-gain", is_flag=True, help="Skip the empty-memory pass of the long-context gain (half the time).")
@click.option("--out", "--json", "json_path", metavar="PATH", help="Write the results as JSON to PATH ('-' for "
              "stdout); missing folders are created.")
@click.option("--plot", "plot_path", metavar="PATH.png", help="Draw loss by segment index (needs matplotlib); "
              "the suffix names the format (.png, .pdf, .svg, .jpg, ...).")
@click.option("--heatmap", "heatmap_path", metavar="PATH.png", help="Haystack task data: draw exact-match accuracy "
              "over document length x depth of the facts; the cells go to PATH.json (and into --out).")
def eval_cmd(words, ckpt, device, dtype, tokenizer, data_dir, split, schedule, samples, compare, batch_size,
             max_docs, no_gain, json_path, plot_path, heatmap_path):
    from elastic_cli.evaluate import job

    ckpt, overrides, rest = _split_words(words, ckpt, "eval")
    if rest:
        raise UsageError(f"unexpected word(s) {' '.join(rest)!r}: eval takes one RUN_OR_CHECKPOINT and KEY=VALUE overrides")
    if compare and schedule:
        raise UsageError("use either --schedule or --compare-schedules, not both")
    job.run(job.EvalOptions(ckpt, _settings(overrides, device, dtype, tokenizer), data_dir, split,
                            tuple(compare or [schedule]), samples, batch_size, max_docs, not no_gain, json_path,
                            plot_path, heatmap_path))


GENERATE_HELP = """Continue a prompt, streaming tokens to stdout.

A long --file (a whole book or repository) is read into memory segment by segment: each
full segment is folded into the model's memory and its KV cache dropped, so memory use and
time per generated token do not grow with the file's length. With --file and --prompt, the
documents are read first and the prompt after them (ask about a book); --file may be given
several times ('-' is stdin). Store-based kinds (xl, memorizing, melodi) keep a fixed-capacity
store: their cost grows with the store's capacity, never past it. Filters apply in the order
top-k, temperature, top-p (as in litgpt); --temperature 0 is greedy decoding. Input text is
UTF-8 unless --encoding says otherwise; undecodable bytes are replaced and counted (--strict refuses).

\b
Examples:
  elastic generate runs/tiny "def main(" --max-new-tokens 64
  elastic generate runs/tiny --file book.txt --prompt "Who wrote the letter?" --temperature 0
  elastic generate runs/tiny --file a.py --file b.py --prompt "def test_"
  cat book.txt | elastic generate runs/tiny - --device cpu
  elastic generate runs/tiny --prompt "def main(" memory.schedule=exponential --num-samples 4 --out s.jsonl
"""


@cli.command("generate", epilog=EXIT_CODES_HELP, help=GENERATE_HELP)
@click.argument("words", nargs=-1, metavar="RUN_OR_CHECKPOINT [PROMPT | -] [KEY=VALUE]...")
@_common
@click.option("--prompt", help="The prompt text (after the --file documents, if any).")
@click.option("--file", "files", multiple=True, metavar="PATH", help="A document to read into memory first "
              "('-' for stdin); repeat for several.")
@click.option("--encoding", default="utf-8", show_default=True, help="Encoding of --file and stdin (a BOM wins).")
@click.option("--strict", is_flag=True, help="Refuse input with undecodable bytes instead of replacing them.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True, help="0 = greedy (argmax).")
@click.option("--top-k", type=int, help="Keep the k most likely tokens (applied first).")
@click.option("--top-p", type=float, default=1.0, show_default=True,
              help="Nucleus: keep the smallest set of tokens with probability >= p, in (0, 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same output.")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--schedule", "--sampling", "schedule", type=Schedule(), metavar="NAME",
              help="Elastic Memory read schedule (memory.schedule) at test time.")
@click.option("--out", "--output", "output", metavar="FILE.jsonl", help="Also write one JSON object per sample "
              "to this file (missing folders are created).")
def generate_cmd(words, ckpt, device, dtype, tokenizer, prompt, files, encoding, strict, max_new_tokens,
                 temperature, top_k, top_p, seed, num_samples, schedule, output):
    from elastic_cli.data import textio
    from elastic_cli.generate import job
    from elastic_cli.generate.decoding import DecodingOptions, check_options
    from elastic_cli.generate.prompt import read_prompt

    ckpt, overrides, rest = _split_words(words, ckpt, "generate")
    files = list(files)
    for word in rest:
        if word == "-":
            files.append("-")
        elif prompt is None:
            prompt = word
        else:
            raise UsageError(f"unexpected word {word!r}: give the prompt once (as a word or --prompt)")
    decoding = check_options(DecodingOptions(temperature, top_k, top_p))
    text = read_prompt(prompt, files, textio.Policy(textio.check_encoding(encoding), strict))
    job.run(job.GenerateOptions(ckpt, text, _settings(overrides, device, dtype, tokenizer), max_new_tokens, decoding,
                                seed, num_samples, schedule, output))


@cli.command("export", epilog=EXIT_CODES_HELP)
@click.argument("words", nargs=-1, metavar="RUN_OR_CHECKPOINT")
@click.option("--ckpt", metavar="RUN_OR_CHECKPOINT", help="The checkpoint, if not given as the first word.")
@click.option("--tokenizer", metavar="PATH", help="The tokenizer (default: the copy the checkpoint carries).")
@click.option("--out", required=True, metavar="DIR", help="Folder to write (built beside it, then renamed; "
              "missing parent folders are created).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="Precision of the exported weights (bf16: half the size). Export computes nothing, so it "
                   "takes no --device: the folder loads on any.")
def export_cmd(words, ckpt, tokenizer, out, overwrite, dtype) -> None:
    """Write a Hugging Face folder: AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True).

    \b
    Needs: pip install 'elastic-cli[hf]'. Examples:
      elastic export runs/tiny --out hf/tiny
      elastic export runs/tiny/checkpoints/step_00000100 --out hf/tiny-100 --overwrite
    """
    from elastic_cli.interop.export.writer import ExportOptions, export

    ckpt, overrides, rest = _split_words(words, ckpt, "export")
    if rest or overrides:
        raise UsageError(f"unexpected word(s) {' '.join(rest + overrides)!r}: export takes one RUN_OR_CHECKPOINT")
    console.info(f"wrote {export(ExportOptions(ckpt, out, overwrite, tokenizer, dtype))}")


@cli.command("lm-eval", epilog=EXIT_CODES_HELP)
@click.argument("words", nargs=-1, metavar="RUN_OR_CHECKPOINT [KEY=VALUE]...")
@_common
@click.option("--tasks", required=True, metavar="A,B,..", help="Harness task names (or local ones, see --data).")
@click.option("--data", "data_dir", metavar="DIR", help="Prepared data as local tasks: elastic_docs (whole documents, "
              "rolling); task data adds elastic_answer (generation) and elastic_answer_ll.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Documents of --data (default: eval.split).")
@click.option("--include-path", metavar="DIR", help="A folder of your own task YAMLs.")
@click.option("--max-docs", "--limit", "limit", type=float, help="Documents per task (a fraction if < 1).")
@click.option("--num-fewshot", type=click.IntRange(min=0))
@click.option("--model-args", metavar="K=V,..", help="schedule=, samples=, seed=, document_end=true (score EOS too).")
@click.option("--bootstrap-iters", type=click.IntRange(min=0), default=100000, show_default=True)
@click.option("--out", "--json", "json_path", metavar="PATH", help="Also write the results as JSON (missing folders "
              "are created).")
def lm_eval_cmd(words, ckpt, device, dtype, tokenizer, tasks, data_dir, split, include_path, limit, num_fewshot,
                model_args, bootstrap_iters, json_path) -> None:
    """Score a checkpoint with lm-evaluation-harness tasks, whole texts through memory (never truncated).

    \b
    Needs: pip install 'elastic-cli[lm-eval]'. Examples:
      elastic lm-eval runs/tiny --data data/stdlib --tasks elastic_docs
      elastic lm-eval runs/tiny --tasks wikitext --out results/lm-eval.json --device cpu
    """
    from elastic_cli.interop import lm_eval_tasks

    ckpt, overrides, rest = _split_words(words, ckpt, "lm-eval")
    if rest:
        raise UsageError(f"unexpected word(s) {' '.join(rest)!r}: lm-eval takes one RUN_OR_CHECKPOINT and KEY=VALUE overrides")
    names = tuple(t.strip() for t in tasks.split(",") if t.strip())
    lm_eval_tasks.run(lm_eval_tasks.LmEvalOptions(ckpt, names, _settings(overrides, device, dtype, tokenizer), data_dir,
                                                  split, include_path, limit, num_fewshot, model_args, bootstrap_iters,
                                                  json_path))
