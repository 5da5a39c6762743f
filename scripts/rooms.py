"""Follow one value through a command: which modules ("rooms") the calls that carry it enter, in order.

  python scripts/rooms.py eval RUN_DIR [more eval words]     follows the checkpoint argument
  python scripts/rooms.py train RECIPE.yaml [key=value ...]  follows the training arguments (the recipe,
                                                              run.dir, --resume) through `elastic train`

A call carries the value when one of its arguments is it or holds it (one level: a tuple, NamedTuple,
dataclass or list); with --derived also when it is a path under it (a run's checkpoint directory,
its files). With --config (train) the resolved RunConfig is followed too. The calls' modules, consecutive repeats merged, are the
stays; a stay in a module visited before (and left since) is a *return*. The package's own modules
only (elastic_cli.*); the click layer's parsing counts as one room (elastic_cli.cli.*).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


VERBOSE = "-v" in sys.argv  # name the functions too
DERIVED = "--derived" in sys.argv  # also paths under the value (the checkpoint directory under a run, its files)


def carries(arg, targets) -> bool:
    def one(a) -> bool:
        if any(a is t for t in targets):
            return True
        if isinstance(a, (str, Path)):
            s = str(a)
            return any(isinstance(t, (str, Path)) and (s == str(t) or DERIVED and s.startswith(str(t).rstrip("/") + "/"))
                       for t in targets)
        return False
    if one(arg):
        return True
    if isinstance(arg, (tuple, list)):
        return any(one(a) for a in arg)
    if dataclasses.is_dataclass(arg) and not isinstance(arg, type):
        return any(one(getattr(arg, f.name, None)) for f in dataclasses.fields(arg))
    return False


def follow(argv: list[str], targets_of) -> list[str]:
    """Run `elastic ARGV` in this process; the modules of the calls that carry the followed values."""
    from elastic_cli.cli import main

    seen: list[str] = []
    targets: list = list(targets_of(None))

    def profile(frame, event, arg):
        if event != "call":
            return
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("elastic_cli") or frame.f_code.co_name == "__create_fn__":  # dataclass set-up
            return
        code = frame.f_code
        values = [frame.f_locals.get(v) for v in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]]
        if any(carries(v, targets) for v in values):
            room = "elastic_cli.cli" if name.startswith("elastic_cli.cli") else name
            seen.append(room + ("." + code.co_name if VERBOSE else ""))
            for v in values:  # what a call builds from the value is followed too (a config, an options object)
                for t in targets_of(v):
                    if all(t is not u for u in targets):
                        targets.append(t)

    sys.argv = ["elastic", *argv]
    sys.setprofile(profile)
    try:
        main()
    except SystemExit:
        pass
    finally:
        sys.setprofile(None)
    return seen


def summary(seen: list[str]) -> dict:
    stays = [r for i, r in enumerate(seen) if i == 0 or seen[i - 1] != r]
    returns = sum(1 for i, r in enumerate(stays) if r in stays[:i])
    return {"stays": len(stays), "rooms": len(set(stays)), "returns": returns, "path": stays}


def main_() -> None:
    what, *words = [w for w in sys.argv[1:] if w not in ("--derived", "-v")]
    if what == "eval":
        ckpt = words[0]
        seen = follow(["eval", *words], lambda v: [ckpt] if v is None else [])
    else:  # the recipe, the run directory and --resume, and what is built from them to carry them on
        from elastic_cli.config import load_config, split_args

        cfg = load_config(*split_args([w for w in words if w != "--config"]))
        resume = words[words.index("--resume") + 1] if "--resume" in words else "never"
        carriers = ("TrainOptions", "RunPlan") + (("RunConfig",) if "--config" in sys.argv else ())
        words = [w for w in words if w != "--config"]
        seen = follow(["train", *words], lambda v: [words[0], cfg.run.dir, resume] if v is None else
                      ([v] if type(v).__name__ in carriers else []))
    s = summary(seen)
    print(f"{what}: {s['stays']} stays in {s['rooms']} rooms, {s['returns']} returns")
    print(" -> ".join(m.replace("elastic_cli.", "") for m in s["path"]))


if __name__ == "__main__":
    main_()
