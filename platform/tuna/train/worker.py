"""One training rank: ``python -m tuna.train.worker --config R --stage 1|2|all [--variant V] [--resume] [key=value ...]``.

Every launcher runs this module: the local ``deepspeed`` launcher (2 CPU ranks here), torchrun in a
PyTorchJob, or the Kubeflow Trainer DeepSpeed runtime in a TrainJob. Rank and world size come from the
environment (RANK/WORLD_SIZE/MASTER_ADDR or the MPI variables), read by ``deepspeed.init_distributed``.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import warnings
from collections.abc import Sequence

from tuna.errors import TunaError
from tuna.recipe import load_recipe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuna.train.worker", description="one DeepSpeed training rank")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML recipe")
    p.add_argument("--stage", required=True, choices=["1", "2", "all"], help="training stage (all = 1 then 2, one launch)")
    p.add_argument("--variant", default="tuna", help="model variant (tuna, baseline, captions, random, tuner_off)")
    p.add_argument("--resume", action="store_true", help="continue from the newest ZeRO checkpoint of this stage")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # RANK is set by the deepspeed launcher and torchrun; under mpirun (TrainJob) only Open MPI's own variable is.
    rank = os.environ.get("RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
    if not os.environ.get("TUNA_DEBUG"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars per rank say nothing
        hf_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.distributed deprecations inside DeepSpeed
    try:
        from tuna.train.engine import train_stage

        cfg = load_recipe(args.config, args.overrides)
        for stage in [1, 2] if args.stage == "all" else [int(args.stage)]:
            train_stage(cfg, stage, args.variant, resume=args.resume)
        return 0
    except TunaError as err:
        print(f"tuna train [rank {rank}]: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # an internal bug: one line, the traceback on request
        if os.environ.get("TUNA_DEBUG"):
            raise
        print(f"tuna train [rank {rank}]: internal error: {type(err).__name__}: {err} (set TUNA_DEBUG=1 for the traceback)",
              file=sys.stderr, flush=True)
        return 1


def shutdown(code: int) -> None:
    """Leave the process group, run Python's exit handlers, and exit with ``code`` without the
    interpreter's C++ teardown: a gloo or DeepSpeed thread still joinable there aborts the rank with
    "terminate called without an active exception" after a successful stage (seen after ZeRO-3)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as err:  # the work is saved; a failed goodbye must not fail the stage
        print(f"tuna train: warning: leaving the process group failed: {err}", file=sys.stderr, flush=True)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if code == 0:
        finalize_mpi()
    os._exit(code)


def finalize_mpi() -> None:
    """Finalize MPI when DeepSpeed's rank discovery initialized it (mpi4py, under the TrainJob's mpirun).

    mpi4py finalizes at interpreter exit, which ``os._exit`` skips; a rank leaving without MPI_Finalize makes
    mpirun report it as "exiting improperly" and fail the whole job (exit code 1) after the stage succeeded.
    Only on success: a failing rank must leave improperly so that mpirun aborts the others.
    """
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()


if __name__ == "__main__":
    shutdown(main())
