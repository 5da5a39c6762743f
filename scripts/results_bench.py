"""Write a bench results page from a measurement folder: docs/results-gpu.md from
`scripts/gpu-check.sh`'s, docs/results-cpu.md from `scripts/bench-cpu.sh`'s.

Every number comes from the folder's files: steps.jsonl (exit code and seconds of each step),
tests.xml (pytest's JUnit report of the GPU-marked tests, GPU check only), bench.json
(`elastic bench --json`, which records the commit it ran) and commands.txt. A step without its file
is reported as not measured, never filled in.

  python scripts/results_bench.py runs/gpu-check --out docs/results-gpu.md
  python scripts/results_bench.py runs/bench-cpu --out docs/results-cpu.md --title "CPU bench"
"""
from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from elastic_cli.code_version import code_version  # noqa: E402

GPU_BARS = {"mfu": (">=", 0.40), "train_ratio_elastic_vs_none": (">=", 0.90)}  # issue 13, on a GPU
GIB = 1 << 30


def read_steps(out: Path) -> list[dict]:
    path = out / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_tests(out: Path) -> dict | None:
    """{tests, failures, errors, skipped, failed: [names]} from pytest's JUnit XML, or None."""
    path = out / "tests.xml"
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                        if case.find("failure") is not None or case.find("error") is not None]
    return counts


def verdict(value, op: str, bound: float) -> str:
    if not isinstance(value, (int, float)):
        return "not measured"
    return "met" if (value >= bound if op == ">=" else value <= bound) else "MISSED"


def num(value, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "not measured"


def train_section(bench: dict) -> list[str]:
    t = bench["train"]
    lines = ["## Training at the model shape", "",
             f"`micro_batch` {t['micro_batch']}, {t['segments']} segments of {bench['model']['segment_len']} tokens, "
             f"BPTT over {t['bptt_segments']}, {t['dtype']}, compile {str(t.get('compile', False)).lower()}; "
             f"{bench['plan']['train_repeats']} timed steps per kind (interleaved, after untimed warm-up steps).", "",
             "| kind | tokens/s (median) | spread | peak memory (GiB) | MFU |", "|---|---|---|---|---|"]
    for kind, tps in bench["train_tokens_per_s"].items():
        peak = bench.get("train_peak_bytes", {}).get(kind)
        lines.append(f"| {kind} | {tps['median']:,.0f} | {tps['spread']:.3f} | "
                     f"{num(peak / GIB if isinstance(peak, (int, float)) else None, '.2f')} | {num(bench.get(f'mfu_{kind}'))} |")
    return lines + [""]


def history_section(bench: dict) -> list[str]:
    plan = bench["plan"]
    (es, el), (gs, gl) = plan["eval_histories"], plan["generate_histories"]
    lines = ["## Long documents", "",
             f"Eval peak memory over a document of {el:,} tokens against {es:,}; eval time per token after "
             f"{es:,} / {el:,} tokens; time per generated token after {gs:,} / {gl:,} tokens.", "",
             f"| kind | eval peak {es:,} (MiB) | eval peak {el:,} (MiB) | eval ms/token {es:,} | eval ms/token {el:,} "
             f"| generate ms/token {gs:,} | generate ms/token {gl:,} |", "|---|---|---|---|---|---|---|"]
    for kind in bench.get("history_kinds", []):
        peaks, ev, gen = bench["eval_peak_bytes"][kind], bench["eval_s_per_token"][kind], bench["generate_s_per_token"][kind]
        lines.append(f"| {kind} | {peaks[str(es)] / (1 << 20):.1f} | {peaks[str(el)] / (1 << 20):.1f} | "
                     f"{ev[str(es)]['median'] * 1e3:.3f} | {ev[str(el)]['median'] * 1e3:.3f} | "
                     f"{gen[str(gs)]['median'] * 1e3:.3f} | {gen[str(gl)]['median'] * 1e3:.3f} |")
    lines += ["", "Long against short, per kind (medians of interleaved per-repeat ratios; spread in brackets), "
              "and the memory floats held per sequence after each history (equal: the state is bounded):", "",
              "| kind | eval peak memory | eval time per token | generation time per token | memory floats |",
              "|---|---|---|---|---|"]
    spread = bench.get("spread", {})
    for kind in bench.get("history_kinds", []):
        cells = []
        for prefix in ("eval_memory_ratio_", "eval_time_ratio_", "generate_latency_ratio_"):
            key = next((k for k in bench if k.startswith(prefix) and k.endswith(f"_{kind}")
                        and k[len(prefix):-len(kind) - 1].count("_vs_") == 1), None)
            cell = num(bench.get(key))
            cells.append(cell + (f" ({spread[key]:.3f})" if key in spread else ""))
        floats = bench.get("state_floats", {}).get(kind, {})
        cells.append(" / ".join(f"{v:,}" for _, v in sorted(floats.items(), key=lambda kv: int(kv[0]))) or "not recorded")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines + [""]


def bars_section(bench: dict) -> list[str]:
    lines = ["## Bars", "", "| metric | measured | spread | bar | verdict |", "|---|---|---|---|---|"]
    bars = {k: tuple(v.split()) for k, v in bench.get("targets", {}).items()}
    if bench.get("device") == "cuda":
        bars.update({k: (op, str(b)) for k, (op, b) in GPU_BARS.items()})  # on a GPU: elastic >= 0.9 x none
    for key, (op, bound) in bars.items():
        value = bench.get(key)
        spread = bench.get("spread", {}).get(key)
        shown = "" if spread is None else num(spread)
        lines.append(f"| `{key}` | {num(value)} | {shown} | {op} {bound} | {verdict(value, op, float(bound))} |")
    lines.append("")
    kernels = [k for k in ("absorb_vs_matmul_floor", "absorb_cached_vs_matmul_floor", "sampling_vs_matmul_floor")
               if k in bench]
    if kernels:
        lines += ["Elastic Memory kernels against a plain matmul of the same FLOPs (recipe shape): "
                  + ", ".join(f"`{k}` {bench[k]:.2f}" for k in kernels) + ".", ""]
    return lines


def code_line(bench: dict | None, commit: str | None) -> str:
    """The commit the bench ran (recorded in bench.json), else the checkout's at writing time."""
    code = (bench or {}).get("code") or {}
    if code.get("commit"):
        return f", commit `{code['commit'][:12]}`" + (" with uncommitted changes" if code.get("dirty") else "")
    return f", written at commit `{commit[:12]}`" if commit else ""


def render(out: Path, commit: str | None, title: str = "GPU check") -> str:
    steps, tests = read_steps(out), read_tests(out)
    bench_path = out / "bench.json"
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None
    head = f"{bench['device_name']}, torch {bench['torch']}" if bench else "device not recorded (no bench.json)"
    if bench and bench.get("threads"):
        head += f", {bench['threads']} CPU thread{'s' if bench['threads'] > 1 else ''}"
    if bench and bench.get("device") == "cpu" and bench.get("host_malloc"):
        head += f", host memory {bench['host_malloc']}"
    lines = [f"# {title}", "",
             f"Written by `scripts/results_bench.py` from `{out}`: {head}{code_line(bench, commit)}. "
             "Every number below comes from the files there.", "",
             "| step | exit code | seconds | limit (s) |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} | {s['limit_s']} |" for s in steps] or ["| (none run) | | | |"]
    lines.append("")
    if any(s["step"] == "tests" for s in steps) or tests is not None:
        lines += ["## GPU-marked tests", ""]
        if tests is None:
            lines.append("Not measured (no tests.xml).")
        else:
            passed = tests["tests"] - tests["failures"] - tests["errors"] - tests["skipped"]
            lines.append(f"{passed} passed, {tests['failures'] + tests['errors']} failed, {tests['skipped']} skipped.")
            lines += [f"- failed: `{name}`" for name in tests["failed"]]
        lines.append("")
    if bench is None:
        lines += ["## Bench", "", "Not measured (no bench.json: see the bench step's exit code and log).", ""]
    else:
        if bench.get("skipped_phases") or bench.get("phases_done") not in (None, ["gpu_path", "train", "kernels", "history"]):
            lines += [f"Phases measured: {', '.join(bench.get('phases_done', [])) or 'none'}; skipped past the "
                      f"deadline: {', '.join(bench.get('skipped_phases', [])) or 'none'} (a run cut short keeps "
                      "what it measured).", ""]
        if "train_tokens_per_s" in bench:
            lines += train_section(bench)
        if "eval_peak_bytes" in bench:
            lines += history_section(bench)
        lines += bars_section(bench)
    commands = out / "commands.txt"
    if commands.is_file():
        lines += ["## Commands", "", "```", *commands.read_text().splitlines(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the measurement folder (gpu-check.sh, bench-cpu.sh)")
    parser.add_argument("--out", dest="dest", type=Path, default=Path("docs/results-gpu.md"))
    parser.add_argument("--title", default="GPU check", help="the page's title")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        print(f"error: {args.out} is not a folder (run scripts/gpu-check.sh or scripts/bench-cpu.sh first)",
              file=sys.stderr)
        return 2
    text = render(args.out, code_version()["commit"], args.title)
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.dest.with_name(args.dest.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.dest)  # atomic: never a half-written results file
    bench_path = args.out / "bench.json"
    if bench_path.is_file():  # the same numbers, machine-readable, beside the page (results-gpu.json)
        bench = json.loads(bench_path.read_text())
        measured = (bench.get("code") or {}).get("commit") or code_version()["commit"]  # the code the bench ran
        record = {"commit": measured, **{k: bench[k] for k in sorted(bench) if k != "code"}}
        dest = args.dest.with_suffix(".json")
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp.replace(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
