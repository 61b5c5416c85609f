"""Training benchmark: the platform's DeepSpeed ZeRO-2 step vs a plain PyTorch DDP loop, in one run, same machine.

Both run on the same 2 CPU ranks (gloo), with the same TUNA model, trainable parameters, AdamW,
batches and data (the stage's examples, collated the same way; with train.cache_vision, as `tuna train`, the
frozen tower's outputs encoded once up front, else images decoded each step). Reported:
median per-step time of each and the platform's overhead ratio (goal <= 1.10), and the per-rank
optimizer-state bytes of ZeRO-2 vs plain data parallel (AdamW moments; ZeRO-2 partitions them).

    .venv/bin/python bench/train.py --config configs/smoke.yaml [--stage 2] [--steps 30] [--buckets 2] [--out bench/results/train.json]

--buckets N also times ``train.length_buckets=N`` (each micro-batch run in N forwards of similar lengths) against the
whole micro-batches, on the same DeepSpeed engine and steps.

Needs the recipe's world, encoder, datastores, LM (and stage 1 for --stage 2): `tuna run` builds them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from tuna.recipe import load_recipe


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t))


def _timed(fn, steps: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        fn(i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: Any) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tuna.train import ds_config
    from tuna.train.engine import BatchPlan, cache_vision, example_lengths, optimizer_step, prepare_stage

    cfg = load_recipe(args.config, args.overrides)
    torch.set_num_threads(cfg.train.threads_per_rank)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    sc = cfg.train.stage(args.stage)
    result: dict[str, Any] = {}

    # Plain PyTorch: DDP over gloo, AdamW on the same trainable parameters, the same batches.
    torch.manual_seed(cfg.run.seed)
    inp = prepare_stage(cfg, args.variant, args.stage, rank, dist.barrier, lambda s: None)
    if cfg.train.cache_vision:   # as `tuna train`: the frozen tower's outputs encoded once, not every step
        cache_vision(cfg, args.stage, inp, rank, world, lambda s: None)
    plan = BatchPlan(len(inp.examples), world, sc.batch_size, sc.grad_accum, cfg.run.seed, example_lengths(inp.examples, sc))
    ddp = DistributedDataParallel(inp.model, find_unused_parameters=False)
    opt = torch.optim.AdamW(inp.params, lr=sc.lr, weight_decay=sc.weight_decay)

    def plain(step: int) -> None:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(plan.accum):
            batch = inp.collate([inp.examples[i] for i in plan.indices(step, micro, rank)])
            loss = ddp(**batch, loss_only=True).loss / plan.accum  # noqa: F821 (ddp is bound above; `del ddp` below confuses the checker)
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(inp.params, cfg.train.gradient_clipping)
        opt.step()
        mean = torch.tensor([total])
        dist.all_reduce(mean)

    result["plain_step_s"] = _timed(plain, args.steps, args.warmup)
    result["plain_optimizer_state_bytes"] = _state_bytes(opt)
    del ddp, opt, inp

    # The platform: the same step function `tuna train` runs, on a DeepSpeed ZeRO-2 engine.
    torch.manual_seed(cfg.run.seed)
    inp = prepare_stage(cfg, args.variant, args.stage, rank, dist.barrier, lambda s: None)
    if cfg.train.cache_vision:
        cache_vision(cfg, args.stage, inp, rank, world, lambda s: None)
    ds = ds_config.resolve(cfg, args.stage, world, hidden_size=inp.model.config.text_config.hidden_size)
    ds["zero_optimization"]["stage"] = 2
    opt = torch.optim.AdamW(inp.params, lr=sc.lr, weight_decay=sc.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=inp.model, optimizer=opt, config=ds)
    result["deepspeed_step_s"] = _timed(lambda s: optimizer_step(engine, inp.collate, inp.examples, plan, s, rank),
                                        args.steps, args.warmup)
    if args.buckets > 1:   # the same engine and steps, each micro-batch run in train.length_buckets forwards
        from tuna.train.data import padding_ratio

        first = plan.epoch_batches(inp.examples, rank)
        result["text_padding"] = {"whole": round(padding_ratio(first), 3), "buckets": round(padding_ratio(first, args.buckets), 3)}
        result["buckets_step_s"] = _timed(lambda s: optimizer_step(engine, inp.collate, inp.examples, plan, s, rank,
                                                                   args.buckets), args.steps, args.warmup)
    result["deepspeed_optimizer_state_bytes"] = _state_bytes(engine.optimizer.optimizer)
    result["trainable_params"] = sum(p.numel() for p in inp.params)
    result["examples"], result["global_batch"] = len(inp.examples), plan.global_batch
    out.put((rank, result))
    dist.barrier()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/smoke.yaml")
    p.add_argument("--stage", type=int, default=1, choices=[1, 2])
    p.add_argument("--variant", default="tuna")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per loop")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--buckets", type=int, default=1, help="also time train.length_buckets=N on the same engine and steps "
                                                           "(the peer: whole micro-batches)")
    p.add_argument("--out", default="bench/results/train.json")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_recipe(args.config, args.overrides)
    world = cfg.train.ranks
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, port, args, queue)) for r in range(world)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=3600) for _ in procs)
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        print(f"bench/train.py: a rank failed (exit codes {[proc.exitcode for proc in procs]})", file=sys.stderr)
        return 1
    r0 = results[0]
    plain, ds = statistics.median(r0["plain_step_s"]), statistics.median(r0["deepspeed_step_s"])
    report = {
        "recipe": args.config, "stage": args.stage, "variant": args.variant, "ranks": world,
        "threads_per_rank": cfg.train.threads_per_rank, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "global_batch": r0["global_batch"], "trainable_params": r0["trainable_params"],
        "plain_ddp": {"median_step_s": round(plain, 4), "p90_step_s": round(sorted(r0["plain_step_s"])[int(0.9 * args.steps)], 4),
                      "optimizer_state_bytes_per_rank": [results[r]["plain_optimizer_state_bytes"] for r in sorted(results)]},
        "deepspeed_zero2": {"median_step_s": round(ds, 4), "p90_step_s": round(sorted(r0["deepspeed_step_s"])[int(0.9 * args.steps)], 4),
                            "optimizer_state_bytes_per_rank": [results[r]["deepspeed_optimizer_state_bytes"] for r in sorted(results)]},
        "step_time_ratio_deepspeed_over_plain": round(ds / plain, 3),
        "optimizer_state_ratio_zero2_over_plain": round(results[0]["deepspeed_optimizer_state_bytes"] / max(1, results[0]["plain_optimizer_state_bytes"]), 3),
        **({} if "buckets_step_s" not in r0 else {
            f"deepspeed_zero2_length_buckets_{args.buckets}": {"median_step_s": round(statistics.median(r0["buckets_step_s"]), 4)},
            "step_time_ratio_buckets_over_whole": round(statistics.median(r0["buckets_step_s"]) / ds, 3),
            "text_padding_buckets": r0["text_padding"]}),
        "machine": {"python": pyplatform.python_version(), "torch": torch.__version__, "cores": os.cpu_count()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("plain_ddp", "deepspeed_zero2", "step_time_ratio_deepspeed_over_plain",
                                              "optimizer_state_ratio_zero2_over_plain")} | {k: v for k, v in report.items() if "buckets" in k},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
