"""Needle-in-a-haystack heatmaps of several runs side by side, from their `elastic eval --json` files
on haystack data (each result's "heatmap": accuracy per length x depth cell), plus the cells as JSON.

  python scripts/results_heatmap.py eval/none.json eval/elastic.json --out docs/babilong-heatmap.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
from elastic_cli.evaluate import heatmap  # noqa: E402
from elastic_cli.atomic import write_atomic  # noqa: E402


def panels(paths: list[Path]) -> list[tuple[str, dict]]:
    """(title, cells) for every result that has a heatmap, titled by file stem and memory kind."""
    out = []
    for p in paths:
        report = json.loads(p.read_text())
        for r in report["results"]:
            if r.get("heatmap"):
                out.append((f"{p.stem}: {r['memory']['kind']}", r["heatmap"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="+", type=Path, help="elastic eval --json files")
    ap.add_argument("--out", type=Path, required=True, help="image to write (its suffix names the format)")
    args = ap.parse_args(argv)
    found = panels(args.evals)
    if not found:
        print("error: no result with a heatmap (evaluate haystack data: prepare with --haystack)", file=sys.stderr)
        return 3
    heatmap.draw(found, args.out)
    write_atomic(args.out.with_suffix(".json"), (json.dumps(dict(found), indent=1) + "\n").encode())
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
