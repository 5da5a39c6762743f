"""`elastic prepare` of one large document with --workers 1 and 2, interleaved: throughput and peak memory.

The document is the Python standard library's .py files (sorted, concatenated, repeated) cut to
--mb megabytes at a line end: one file, so one document, the case where only blocks of one document
can keep several workers busy. Each round runs `prepare --workers 1` then `--workers 2` (then 1, 2, ...)
so that drift in the machine's load hits both alike; the throughput is the document's bytes over the
command's wall time (start-up included) and also what `prepare` itself reports (from after the sources
are hashed). Peak RSS: the largest process (getrusage of the children) and, sampled every 50 ms from
/proc, the process tree together. Run it on a quiet machine: the ratio is the point.

  python scripts/prepare_throughput.py --mb 100 --rounds 3 --json docs/results-prepare.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTED = re.compile(r"\(([\d.]+) MB/s")


def document(path: Path, mb: int) -> int:
    """Write the stdlib's .py files, repeated, up to `mb` MB (cut after a newline); its bytes."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    want, n = mb * 1_000_000, 0
    with open(path, "wb") as out:
        while n < want:
            for f in files:
                data = f.read_bytes()
                if n + len(data) > want:
                    data = data[:data.rfind(b"\n", 0, want - n) + 1]
                out.write(data)
                n += len(data)
                if n >= want or not data:
                    return n
    return n


def tree_rss(pid: int) -> int:
    """RSS in bytes of `pid` and its descendants (from /proc; 0 where it cannot be read)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def run(doc: Path, out: Path, workers: int, python: str) -> dict:
    cmd = [python, "-m", "elastic_cli", "prepare", str(doc), "--tokenizer", "tokenizers/code-8k.model",
           "--out", str(out), "--workers", str(workers), "--force"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    text, _ = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{text}")
    reported = REPORTED.search(text)
    return {"workers": workers, "wall_s": wall, "reported_mb_s": float(reported.group(1)) if reported else None,
            "tree_peak_rss_mb": peak[0] / 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=100, help="document size in MB (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --workers 1 and 2 (default 3)")
    p.add_argument("--json", type=Path, help="write the runs and medians here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "stdlib.py.txt"
        size = document(doc, a.mb)
        runs = []
        for r in range(a.rounds):
            for workers in (1, 2):
                row = {"round": r, **run(doc, Path(tmp) / "out", workers, sys.executable)}
                row["wall_mb_s"] = size / 1e6 / row["wall_s"]
                runs.append(row)
                print(json.dumps(row), flush=True)
    median = {w: {k: statistics.median(x[k] for x in runs if x["workers"] == w)
                  for k in ("wall_mb_s", "reported_mb_s", "tree_peak_rss_mb")} for w in (1, 2)}
    ratio = {k: median[2][k] / median[1][k] for k in ("wall_mb_s", "reported_mb_s")}
    print(f"{size / 1e6:.1f} MB, median of {a.rounds}: workers 1 {median[1]['wall_mb_s']:.2f} MB/s "
          f"({median[1]['reported_mb_s']:.2f} reported), workers 2 {median[2]['wall_mb_s']:.2f} MB/s "
          f"({median[2]['reported_mb_s']:.2f}): {ratio['wall_mb_s']:.2f}x ({ratio['reported_mb_s']:.2f}x reported); "
          f"peak RSS of the tree {median[1]['tree_peak_rss_mb']:.0f} / {median[2]['tree_peak_rss_mb']:.0f} MB")
    if a.json:
        a.json.write_text(json.dumps({"document_bytes": size, "cpus": os.cpu_count(), "runs": runs, "median": median,
                                      "ratio_workers2_vs_1": ratio}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
