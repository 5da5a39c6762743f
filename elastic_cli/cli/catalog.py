"""What exists, for `elastic list`: recipes (and memory overlays), memory kinds with their options,
synthetic tasks and built-in corpora. Each entry is (name, one-line description, detail lines)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

# One line per shipped kind (the README's table); a kind added by a plugin shows its docstring's first line.
KIND_LINES = {
    "none": "no memory: the same model reading each segment alone (the baseline)",
    "elastic": "Elastic Memory: online HiPPO-LegS compression of every key/value, read back by polynomial sampling",
    "xl": "Transformer-XL: the last `cache` tokens' keys/values at RoPE positions before the segment",
    "memorizing": "Memorizing Transformer: exact top-k over a FIFO store of keys/values, gated, one layer",
    "melodi": "MELODI: short-term token mixing, summary tokens, long-term FIFO on one layer",
    "infinity": "∞-former: ridge-regressed RBF coefficients, continuous Gaussian attention",
    "armt": "ARMT: associative matrix memory, DPFP features, delta rule, memory tokens",
    "caching": "Memory Caching: snapshots of a base memory (default armt) combined by a router",
    "rmt": "Recurrent Memory Transformer: memory tokens carried by the last layer",
}
TASK_LINES = {
    "passkey": "a 5-digit key hidden at a random depth in filler, asked for at the end (Landmark Attention)",
    "recall": "key -> value statements spread over the document, one key queried at the end (RMT/ARMT)",
    "sorting": "symbols with drifting frequencies, then the 20 symbols by frequency (the ∞-former task)",
    "mqar": "multi-query associative recall, a chosen range of segment distances between fact and query (Zoology)",
    "babilong": "bAbI qa1-qa5 facts hidden in the user's books (--haystack), the question at the end (BABILong)",
    "niah-multikey": "several key -> value needles in real text, one key asked for (RULER niah_multikey)",
    "niah-multivalue": "several values of one key in real text, all asked for (RULER niah_multivalue)",
}
CORPUS_LINES = {"python-stdlib": "this Python's standard library, one document per package (no download)"}
COMMON_OPTIONS = "every kind also takes memory.layers: all, middle (n_layer // 2) or a list of layer indices"


class Entry(NamedTuple):
    name: str
    line: str
    details: tuple[str, ...] = ()


def kinds() -> list[Entry]:
    """Every registered memory kind with its memory.* options (default and description)."""
    from elastic_cli.memory import options

    out = []
    for name, cls in options.registry().items():
        doc = (cls.__doc__ or "").strip().splitlines()
        fields = [(k, f) for k, f in cls.Options.model_fields.items() if k not in ("kind", "layers")]
        details = tuple(f"memory.{k}={_show(f.default)}: {f.description or ''}".rstrip(": ") for k, f in fields)
        out.append(Entry(name, KIND_LINES.get(name) or (doc[0] if doc else ""), details or ("(no options)",)))
    return out


def tasks() -> list[Entry]:
    from elastic_cli.data.tasks import TASKS

    return [Entry(t, TASK_LINES.get(t, ""), (f"elastic prepare --task {t} --length N --count N "
                                             f"--tokenizer T.model --out data/{t}",)) for t in TASKS]


def corpora() -> list[Entry]:
    from elastic_cli.data.sources import CORPORA

    return [Entry(c, CORPUS_LINES.get(c, ""), (f"elastic prepare --corpus {c} --tokenizer T.model --out DIR",))
            for c in CORPORA]


def recipe_dirs() -> list[Path]:
    """./recipes, and the recipes shipped beside the package when that is another folder."""
    here, shipped = Path("recipes"), Path(__file__).resolve().parents[1] / "recipes"
    dirs = [d for d in (here, shipped) if d.is_dir()]
    return [d for i, d in enumerate(dirs) if d.resolve() not in [e.resolve() for e in dirs[:i]]]


def recipes() -> list[Entry]:
    """Recipes (top level) and memory overlays (memory/), with the first line of their header comment."""
    out = []
    for root in recipe_dirs():
        for path in sorted(root.glob("*.yaml")) + sorted(root.glob("memory/*.yaml")):
            out.append(Entry(str(path), _header(path)))
    return out


def _header(path: Path) -> str:
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").rstrip()
        if line.strip():
            break
    return ""


def _show(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
