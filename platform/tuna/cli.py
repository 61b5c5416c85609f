"""The `tuna` command: one dispatch table from verb to library call. No logic lives here.

Every verb takes ``--config FILE`` and ``key=value`` overrides (``tuna world --config
configs/smoke.yaml world.sizes.web=500``). User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuna import __version__
from tuna.config import TunaConfig, load_config
from tuna.errors import TunaError

DEFAULT_CONFIG = "configs/mini.yaml"


def _config(args: argparse.Namespace) -> TunaConfig:
    return load_config(args.config, args.overrides)


def cmd_world(args: argparse.Namespace) -> int:
    from tuna.world.generate import generate_world, is_up_to_date, world_dir

    cfg = _config(args)
    if not args.force and is_up_to_date(cfg):
        print(f"world is up to date at {world_dir(cfg)} (same seed and world config); --force regenerates")
        return 0
    manifest = generate_world(cfg, progress=not args.quiet)
    _print_counts(manifest["counts"])
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run every step built so far, in order, skipping steps whose outputs are up to date."""
    from tuna.world.generate import generate_world, is_up_to_date, world_dir

    cfg = _config(args)
    timings: list[tuple[str, float, str]] = []
    t0 = time.perf_counter()
    if not args.force and is_up_to_date(cfg):
        timings.append(("world", 0.0, "up to date"))
    else:
        generate_world(cfg, progress=not args.quiet)
        timings.append(("world", time.perf_counter() - t0, f"-> {world_dir(cfg)}"))
    print(f"\nrun '{cfg.run.name}' (seed {cfg.run.seed}) done:")
    for step, secs, note in timings:
        print(f"  {step:<10} {secs:7.1f}s  {note}")
    return 0


def _print_counts(counts: dict[str, int]) -> None:
    width = max(len(k) for k in counts)
    for key, value in counts.items():
        print(f"  {key:<{width}}  {value:>8}")


@dataclass(frozen=True)
class Verb:
    help: str
    run: Callable[[argparse.Namespace], int]
    add_args: Callable[[argparse.ArgumentParser], None] | None = None


def _force_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="regenerate even when the output is up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


VERBS: dict[str, Verb] = {
    "world": Verb("generate the bundled world: taxonomies, images and every corpus in real formats", cmd_world, _force_quiet),
    "run": Verb("run the whole pipeline built so far on a recipe (the README's main command)", cmd_run, _force_quiet),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuna", description="TUNA platform: tag-augmented MLLM training, evaluation and serving.")
    parser.add_argument("--version", action="version", version=f"tuna {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, verb in VERBS.items():
        p = sub.add_parser(name, help=verb.help, description=verb.help)
        p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE", help=f"YAML recipe (default: {DEFAULT_CONFIG})")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, e.g. world.sizes.web=500")
        if verb.add_args:
            verb.add_args(p)
        p.set_defaults(func=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TunaError as err:
        print(f"tuna {args.verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"tuna {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal bug: one line for the user, the traceback on request
        if os.environ.get("TUNA_DEBUG"):
            raise
        print(f"tuna {args.verb}: internal error: {type(err).__name__}: {err} (set TUNA_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
