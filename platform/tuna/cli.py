"""The `tuna` command: one dispatch table from verb to library call. No logic lives here.

Every verb takes ``--config FILE`` and ``key=value`` overrides (``tuna world --config
configs/smoke.yaml world.sizes.web=500``). User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna import __version__
from tuna.errors import TunaError
from tuna.layout import layout
from tuna.recipe import Recipe, load_recipe
from tuna.steps import STEPS

DEFAULT_CONFIG = "configs/mini.yaml"


def _config(args: argparse.Namespace) -> Recipe:
    return load_recipe(args.config, args.overrides)


def _step(name: str, args: argparse.Namespace, **options: Any) -> int:
    """Run step ``name`` of :mod:`tuna.steps` with the verb's flags; print its lines."""
    from tuna.steps import Options, execute

    out = execute(name, _config(args), Options(force=getattr(args, "force", False), progress=not args.quiet, **options))
    for line in out.lines or [out.summary]:
        print(line)
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    """Generate the bundled world (skipped when up to date) and print its counts."""
    return _step("world", args, log=(lambda s: None) if args.quiet else print)


def cmd_index(args: argparse.Namespace) -> int:
    """Build the datastores (each skipped when up to date unless --force/--rebuild) and print one line each."""
    return _step("index", args, datastores=() if args.datastore == "all" else (args.datastore,), rebuild=args.rebuild)


def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datastore", default="all", help="which declared datastore to build (the recipe's datastores:; default: all)")
    p.add_argument("--rebuild", action="store_true", help="drop the collection first instead of resuming an unfinished build")
    _force_quiet(p)


def cmd_encoder(args: argparse.Namespace) -> int:
    """Train the tiny CLIP (or load model.vision_tower) and print its zero-shot FINER accuracy."""
    return _step("encoder", args)


def cmd_lm(args: argparse.Namespace) -> int:
    """Train the tokenizer and tiny Llama on the text sources (or load model.language_model); print one summary line."""
    return _step("lm", args, log=(lambda s: None) if args.quiet else print)


def cmd_mine(args: argparse.Namespace) -> int:
    """Mine tags from the web corpora (one, or all the datastores need) into the run's tags/<domain>/; print a summary."""
    return _step("mine", args, domains=() if args.domain == "all" else (args.domain,))


def _mine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default="all", help="which web corpus to mine: A, B or a data.corpora entry (default: all "
                   "the declared datastores need)")
    p.add_argument("--force", action="store_true", help="re-mine even when the tags are up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_train(args: argparse.Namespace) -> int:
    """Train stage 1, 2 or both of a variant: locally on DeepSpeed ranks, or as a TrainJob / PyTorchJob."""
    cfg = _config(args)
    stages = (1, 2) if args.stage == "all" else (int(args.stage),)
    if args.launcher == "local":
        return _step("train", args, variants=(args.variant,), stages=stages, resume=args.resume)
    if args.launcher == "docker":
        return _train_docker(args, stages)
    from tuna.train import cluster

    for stage in stages:
        state = cluster.launch(cfg, stage, args.variant, args.overrides, launcher=args.launcher, recipe=args.config,
                               resume=args.resume, dry_run=args.dry_run)
        if state == "Failed":
            raise cluster.ClusterError(f"stage {stage} of {args.variant!r} failed on the cluster; see `kubectl describe` "
                                       f"of the job named above, fix it and resubmit with --resume")
    return 0


def _train_docker(args: argparse.Namespace, stages: Sequence[int]) -> int:
    """The TrainJob each stage renders, run in containers of cluster.image on a Docker network (tuna.train.docker_job)."""
    from tuna.track import PARENT_RUN_ENV
    from tuna.train import docker_job
    from tuna.train.launch import is_noise

    verbose = bool(os.environ.get("TUNA_DEBUG"))
    log: Callable[[str], None] = (lambda line: None if not verbose and is_noise(line) else print(line, flush=True))
    for stage in stages:
        if args.dry_run:
            obj, runtime, files = docker_job.stage_job(args.config, stage, args.variant, args.overrides, resume=args.resume)
            for c in docker_job.plan(obj, runtime, ssh_dir="<ssh-keys>", hostfile_dir="<hostfile-dir>", files=files):
                print(shlex.join(docker_job.run_args(c, f"{obj['metadata']['name']}-net", obj["metadata"]["name"])))
            continue
        rc = docker_job.run_stage(args.config, stage, args.variant, args.overrides, resume=args.resume,
                                  parent_run_id=os.environ.get(PARENT_RUN_ENV) or None, log=log)
        if rc != 0:
            raise docker_job.DockerJobError(f"stage {stage} of {args.variant!r} failed in Docker (launcher exit code {rc}); "
                                            f"the rank's error is printed above; fix it and rerun with --resume")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", default="all", choices=["1", "2", "all"], help="training stage (default: both, in order)")
    p.add_argument("--variant", default="tuna", help="tuna (default), baseline (= LLaVA), captions, random or tuner_off")
    p.add_argument("--resume", action="store_true", help="continue from the newest ZeRO checkpoint of the stage")
    p.add_argument("--launcher", default="local", choices=["local", "trainjob", "pytorchjob", "docker"],
                   help="local DeepSpeed ranks (default), a Kubeflow Trainer v2.3 TrainJob, a PyTorchJob (deprecated: "
                        "Kubeflow Training Operator v1 is being shut down upstream; use trainjob), or the TrainJob "
                        "run in Docker containers of cluster.image (launcher + node pods, mpirun over SSH)")
    p.add_argument("--dry-run", action="store_true", help="with trainjob/pytorchjob: print the validated manifest, submit "
                                                          "nothing; with docker: print the docker run commands")
    _force_quiet(p)


def cmd_run(args: argparse.Namespace) -> int:
    """Run every step built so far, in order, skipping steps whose outputs are up to date."""
    from tuna.runner import run_all

    cfg = _config(args)
    ablations = getattr(args, "ablations", False)
    if getattr(args, "seeds", 1) != 1:
        from tuna.seeds import run_seeds

        run_seeds(cfg, args.seeds, lambda r: run_all(r, force=args.force, progress=not args.quiet, ablations=ablations))
        print("\n" + (layout(cfg).eval / "seeds.md").read_text(encoding="utf-8").rstrip())
        print(f"\nper seed and spread: {layout(cfg).eval / 'seeds.json'}")
        return 0
    results = run_all(cfg, force=args.force, progress=not args.quiet, ablations=ablations)
    print(f"\nrun '{cfg.run.name}' (seed {cfg.run.seed}) done in {sum(r.seconds for r in results):.1f}s:")
    for r in results:
        print(f"  {r.name:<8} {r.seconds:7.1f}s  {r.summary}")

    table, report = layout(cfg).eval_table, layout(cfg).report / "report.md"
    if table.is_file():  # the run ends with the evaluation table and where the report is
        print("\n" + table.read_text(encoding="utf-8").rstrip())
    if report.is_file():
        print(f"\nreport: {report}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    _force_quiet(p)
    p.add_argument("--ablations", action="store_true",
                   help="train and evaluate every eval.ablations variant (tuner off, captions, random, baseline) and print one table")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="run once per seed run.seed..run.seed+N-1 (the others under <data_dir>/seeds/<seed>) and print "
                        "every headline number as mean ± std [min, max] (eval/seeds.md)")


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate trained variants (POPE, FINER, MME, CHAIR; the datastore swap for TUNA) and print the table."""
    from tuna.eval.suite import table
    from tuna.variants import parse_variants, run_variants

    cfg = _config(args)
    names = run_variants(cfg, True) if args.ablations else parse_variants(args.variant)
    if getattr(args, "validation", False):  # the validation splits only: no report, no MLflow, the eval splits untouched
        from tuna.eval.suite import validate_variant

        rows = {v: validate_variant(cfg, v, progress=not args.quiet) for v in names}
        print(table(rows))
        print(f"\nvalidation metrics: {layout(cfg).validation}/<variant>.json")
        return 0
    command = shlex.join(["tuna", "eval", "--config", str(args.config), *(["--ablations"] if args.ablations else
                                                                           ["--variant", args.variant]), *args.overrides])
    from tuna import track
    from tuna.steps import Options, execute

    opts = Options(force=args.force, progress=not args.quiet, variants=names, report_command=command)
    with track.stage_run("eval-report", cfg) as run:
        out = execute("eval", cfg, opts, run=run)
    for line in out.lines:
        print(line)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    _force_quiet(p)
    p.add_argument("--variant", default="tuna,baseline", help="comma-separated trained variants (default: tuna,baseline)")
    p.add_argument("--ablations", action="store_true", help="evaluate every eval.ablations variant")
    p.add_argument("--validation", action="store_true",
                   help="FINER, POPE, MME and CHAIR on the world's validation splits (world.sizes.finer_val, pope_val, mme_val; "
                        "CHAIR on the POPE validation scenes) only, "
                        "to choose settings without the eval splits")


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI for the recipe's local tracking store on 127.0.0.1 until Ctrl-C."""
    from tuna.track_ui import serve_ui

    return serve_ui(_config(args), port=args.port)


def _ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: track.ui_port)")


def cmd_export(args: argparse.Namespace) -> int:
    """Export a trained variant as a Triton model repository (+ its TensorRT-LLM GPU twin with --trtllm), or as a
    Hugging Face folder: --format hf (TUNA, Auto classes) or --format llava (the baseline as LlavaForConditionalGeneration)."""
    if args.format != "triton" and args.trtllm:
        raise TunaError(f"--trtllm writes a Triton repository; it does not go with --format {args.format} (drop one of them)")
    if args.format != "triton":
        from tuna.serve.hf_export import export_hf, export_llava

        cfg, out = _config(args), Path(args.out) if args.out else None
        if args.format == "hf":
            export_hf(cfg, args.variant, out)
        else:
            export_llava(cfg, args.variant or "baseline", out)
        return 0
    return _step("export", args, export_variant=args.variant, export_to=Path(args.out) if args.out else None,
                 trtllm=args.trtllm)


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default=None, help="trained variant to export (default: serve.variant)")
    p.add_argument("--format", default="triton", choices=["triton", "hf", "llava"],
                   help="triton (default): the model repository; hf: a Hugging Face TUNA folder (AutoModel after `import "
                        "tuna.model`); llava: the baseline as a plain LlavaForConditionalGeneration (variant default: baseline)")
    p.add_argument("--trtllm", action="store_true",
                   help="also write trtllm/model_repository: the same ensemble for GPUs, its LLM step on TensorRT-LLM's PyTorch "
                        "LLM API (llmapi layout, 1/model.yaml; no engine build; dtype serve.trtllm_dtype)")
    p.add_argument("--out", default=None, metavar="DIR", help="export folder (default: the run's serve/<variant>)")
    _force_quiet(p)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the exported repository with the local tritonserver until Ctrl-C or SIGTERM; a watchdog probes it with a
    real inference and restarts it when a step died (serve.probe_*, serve.on_failure; see tuna.serve.watchdog)."""
    import signal
    import threading

    from tuna.serve.local import start_server
    from tuna.serve.watchdog import Watchdog

    cfg = _config(args)
    s = cfg.serve
    server = start_server(cfg, args.variant, free_ports=args.free_ports)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ask it:  tuna ask --config {args.config} --url {server.grpc_url} --image <png> \"What is in the image?\"")
    print(f"probe:   tuna probe --url {server.grpc_url}" + (f" (the watchdog does every {s.probe_period}s; on failure: "
                                                             f"{s.on_failure})" if s.probe_period else " (watchdog off)"))
    print("stop it: Ctrl-C (or SIGTERM)", flush=True)
    try:
        if s.probe_period:
            Watchdog(server, period=s.probe_period, deadline=s.probe_deadline, failures=s.probe_failures, on_failure=s.on_failure,
                     max_restarts=s.max_restarts, ready_timeout=s.ready_timeout, log=lambda m: print(m, flush=True)).run(stop)
        while not stop.wait(1.0):
            if server.process is not None and server.process.poll() is not None:
                raise TunaError(f"tritonserver exited with code {server.process.returncode}: {server.log_tail()}")
    finally:
        code = server.stop()
    print(f"tritonserver stopped (exit code {code})")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Ask the served model one tiny question over gRPC with a deadline: exit 0 when it answers, 1 when not (one line)."""
    from tuna.serve.probe import probe

    url = args.url
    if url is None:
        cfg = _config(args)
        url = f"{cfg.serve.host}:{cfg.serve.grpc_port}"
    result = probe(url, args.deadline)
    print(result.line(url), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="Triton gRPC host:port (default: serve.host:serve.grpc_port)")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds the answer may take (default 10)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default=None, help="trained variant to serve (default: serve.variant)")
    p.add_argument("--free-ports", action="store_true", help="bind free ports instead of serve.grpc_port/http_port/metrics_port")


def cmd_image(args: argparse.Namespace) -> int:
    """Build the serving and project images, tagged cluster.serving_image / cluster.image; print size and time."""
    from tuna.images import build_images, check_base, check_serving_image, docker_engine, image_exists

    cfg = _config(args)
    if args.check:
        print(f"Docker engine {docker_engine()}")
        if args.base_image:
            check_base(args.base_image)
            print(f"base image {args.base_image}: python3.11 present (or installable with apt-get)")
        if image_exists(cfg.cluster.serving_image):
            ref = check_serving_image(cfg, args.config)
            print(f"serving image {ref}: runs serve.engine={cfg.serve.engine}")
        return 0
    targets = None if args.target == "all" else (args.target,)
    build_images(cfg, args.base_image, args.torch_variant, targets=targets, log_dir=Path(args.log_dir) if args.log_dir else None,
                 memory=args.memory, index_url=args.index_url, torch_index_url=args.torch_index_url)
    return 0


def _image_args(p: argparse.ArgumentParser) -> None:
    from tuna.images import PYPI_INDEX, PYPI_TORCH_VARIANT, TARGETS, TORCH_VARIANTS

    p.add_argument("--base-image", default=None, metavar="REF",
                   help="base image: Debian/Ubuntu with Python 3.11 (default: the Dockerfile's pinned python image; "
                        "here: tuna-base:bookworm from `make base-image`)")
    p.add_argument("--torch-variant", default="cpu", choices=TORCH_VARIANTS, help="torch build: cpu (default) or a CUDA index (cluster images)")
    p.add_argument("--torch-index-url", default=None, metavar="URL",
                   help=f"where torch comes from (default: PyTorch's index for the variant; {PYPI_INDEX} for "
                        f"{', '.join(sorted(set(PYPI_TORCH_VARIANT.values())))}, the CUDA build PyPI has)")
    p.add_argument("--target", default="all", choices=[*TARGETS, "all"],
                   help="which image (default: all = the serving image of serve.engine, serving or serving-vllm, and project)")
    p.add_argument("--log-dir", default=None, metavar="DIR", help="where each build's full output goes (default: <run.data_dir>/images)")
    p.add_argument("--index-url", default=None, metavar="URL", help="package index for the build (default: PyPI; a mirror)")
    p.add_argument("--memory", default=None, metavar="SIZE", help="memory cap of each build step, e.g. 8g (default: none)")
    p.add_argument("--check", action="store_true", help="only check the Docker engine and the base image, build nothing")


def cmd_ask(args: argparse.Namespace) -> int:
    """Ask the served model one question about one image over gRPC; print the answer and its provenance."""
    from tuna.serve.client import TunaClient

    cfg = _config(args)
    path = Path(args.image)
    if not path.is_file():
        raise TunaError(f"--image {args.image!r}: no such file; give a PNG or JPEG path")
    url = args.url or f"{cfg.serve.host}:{cfg.serve.grpc_port}"
    client = TunaClient(url, timeout=args.timeout)
    question = (path.read_bytes(), args.question, args.max_tokens or cfg.serve.default_max_tokens)
    settings = {"datastore": args.datastore, "temperature": args.temperature, "top_k": args.top_k, "seed": args.seed}
    if args.stream and not args.json:     # the answer as it is generated, then its provenance
        prov: dict = {}
        for chunk in client.ask_stream(*question, **settings):
            print(chunk.delta, end="", flush=True)
            prov = chunk.provenance
        print()
    else:
        reply = client.ask(*question, **settings)
        if args.json:
            print(json.dumps({"answer": reply.text, "provenance": reply.provenance}, indent=1))
            return 0
        print(reply.text)
        prov = reply.provenance
    if prov.get("tags"):
        print(f"  datastore {prov['datastore']} (version {prov['datastore_version']}); tags (score, tuner weight):")
        for tag, score, weight in zip(prov["tags"], prov["scores"], prov["weights"]):
            print(f"    {tag:<28} {score:7.3f}  {weight:6.3f}")
    print(f"  model {prov['model']['name']} {prov['model']['variant']} ({prov['model']['digest']})")
    return 0


def _ask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", help="the question, e.g. \"What is in the image?\"")
    p.add_argument("--image", required=True, help="PNG or JPEG file")
    p.add_argument("--url", default=None, help="Triton gRPC host:port (default: serve.host:serve.grpc_port)")
    p.add_argument("--datastore", default=None, help="datastore to retrieve tags from (A, B, ...; default: the server's)")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens at most (default: serve.default_max_tokens)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0: greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true", help="print answer and provenance as JSON")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated (serve.engine=vllm with serve.vllm_stream)")


def cmd_pipeline(args: argparse.Namespace) -> int:
    """Compile the versioned KFP pipeline, submit it to a KFP host, or run it here through kfp.local."""
    from tuna.kfp.compile import compile_pipeline, compiled_dir, pipeline_version
    from tuna.kfp.local import run_local
    from tuna.kfp.options import PIPELINE_NAME
    from tuna.kfp.submit import submit, submit_params

    if args.action is None:
        raise TunaError("give an action: tuna pipeline compile | submit --host URL | run --local")
    version = args.version or pipeline_version()
    if args.action == "compile":
        cfg = _config(args)  # GPUs, node pool, launcher, image, mounts (cluster section); the declared datastores
        out_dir = Path(args.out) if args.out else compiled_dir()
        print(f"compiled {compile_pipeline(out_dir, version, cfg.cluster, cfg)}")
        return 0
    if args.action == "submit":
        if not args.host:
            raise TunaError("submit needs --host URL (the KFP API, e.g. http://localhost:8888); to run here: run --local")
        out = submit(args.host, args.experiment, version, submit_params(args.config, args.overrides, args.param),
                     cluster=_config(args).cluster, out_dir=Path(args.out) if args.out else None, recipe=_config(args))
        print(f"pipeline {PIPELINE_NAME} version {out['version']} ({out['package']}) -> run {out['run_id']} "
              f"in experiment {args.experiment!r}: {out['url']}")
        return 0
    if not args.local:
        raise TunaError("run executes through kfp.local only: add --local (for a cluster: tuna pipeline submit --host URL)")
    _config(args)  # a bad recipe or override: one line before kfp starts
    params = {k: v for k, v in submit_params(args.config, args.overrides, args.param).items()
              if k not in ("config", "overrides")}
    out = run_local(args.config, args.overrides, params=params, verbose=args.verbose,
                    runner="docker" if args.docker else "subprocess", docker_user=args.docker_user,
                    cache=not args.no_cache)
    print(f"\npipeline done in {out['seconds']:.0f}s; task outputs: {out['run_dir']}"
          + (f"; full log: {out['log']}" if out.get("log") else "")
          + (f"; from kfp.local's cache: {', '.join(out['cached'])}" if out.get("cached") else ""))
    data = Path(out["data_dir"])
    table = data / "eval" / "table.md"
    if table.is_file():
        print("\n" + table.read_text(encoding="utf-8").rstrip())
    report = data / "eval" / "report" / "report.md"
    if report.is_file():
        print(f"\nreport: {report}")
    print(f"MLflow: .venv/bin/tuna ui --config {args.config}   (runs, metrics, models on 127.0.0.1)")
    return 0


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["compile", "submit", "run"], help="compile the IR, submit it to KFP, or run it here")
    p.add_argument("--local", action="store_true", help="run: through kfp.local (SubprocessRunner, this venv)")
    p.add_argument("--docker", action="store_true",
                   help="run --local: every task in a container of the project image (kfp.local DockerRunner; cluster.image, "
                        "built by `tuna image`)")
    p.add_argument("--no-cache", action="store_true",
                   help="run --local: run every task (default: kfp.local's cache serves unchanged data tasks)")
    p.add_argument("--docker-user", default=None, metavar="UID:GID",
                   help="run --local --docker: the tasks' user (default: yours; 1000:1000 is the image's own, as on a cluster)")
    p.add_argument("--verbose", action="store_true", help="run: stream kfp.local's full output (default: task progress; the rest to a log file)")
    p.add_argument("--version", default=None, help="pipeline version (default: <package version>+<git short sha>)")
    p.add_argument("--out", default=None, metavar="DIR", help="where compiled IR goes (default: <repository>/pipelines/compiled)")
    p.add_argument("--host", default=None, help="submit: KFP API URL, e.g. http://localhost:8888")
    p.add_argument("--experiment", default="tuna", help="submit: KFP experiment name (default: tuna)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="submit/run: pipeline parameter, e.g. mlflow_secret=tuna-mlflow (repeatable)")


def cmd_data(args: argparse.Namespace) -> int:
    """Check every declared data source (or --source ones); print the report; exit 2 on a fatal finding."""
    from tuna.datacheck import CheckOptions, check_sources, report_lines, write_report
    from tuna.sources import sources

    src = sources(_config(args))
    chosen = [src[name] for name in args.source] if args.source else src.all()
    checks = check_sources(chosen, CheckOptions(max_missing=args.max_missing, decode_limit=args.decode))
    for line in report_lines(checks):
        print(line)
    if args.json:
        write_report(checks, Path(args.json))
        print(f"report: {args.json}")
    return 2 if any(c.fatal for c in checks) else 0


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="check", choices=["check"],
                   help="check (the default): read every declared source with its loader and report")
    p.add_argument("--source", action="append", default=[], metavar="NAME", help="check only this source (repeatable), e.g. pope_id")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--max-missing", type=float, default=0.05, metavar="FRACTION",
                   help="share of a source's images that may be missing before it is fatal (default: 0.05)")
    p.add_argument("--decode", type=int, default=2000, metavar="N", help="images decoded per source (all are checked to exist; default: 2000)")


def cmd_plan(args: argparse.Namespace) -> int:
    """Build the recipe's architecture on the meta device; print parameters per part and memory per GPU."""
    from tuna.plan import run_plan

    run_plan(_config(args), variant=args.variant, as_json=args.json, track_it=not args.no_track)
    return 0


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default="tuna", help="model variant to plan (default: tuna; baseline = LLaVA-1.5)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of the table")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow even when a tracking URI is configured")


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
    "world": Verb(STEPS["world"].summary, cmd_world, _force_quiet),
    "data": Verb("check the declared data sources: counts, missing/unreadable images, schema errors, duplicate ids",
                 cmd_data, _data_args),
    "plan": Verb("the recipe's architecture on the meta device: parameters per part, memory per GPU (ZeRO-2/3, "
                 "gradient checkpointing)", cmd_plan, _plan_args),
    "encoder": Verb(STEPS["encoder"].summary, cmd_encoder, _force_quiet),
    "mine": Verb(STEPS["mine"].summary, cmd_mine, _mine_args),
    "index": Verb(STEPS["index"].summary, cmd_index, _index_args),
    "lm": Verb(STEPS["lm"].summary, cmd_lm, _force_quiet),
    "train": Verb("train stage 1 and/or 2 with DeepSpeed ZeRO (local ranks, or a TrainJob/PyTorchJob on a cluster)", cmd_train, _train_args),
    "eval": Verb("evaluate trained variants: POPE, FINER EM, MME, CHAIR and the datastore swap; print the table", cmd_eval, _eval_args),
    "run": Verb("run the whole pipeline built so far on a recipe (the README's main command)", cmd_run, _run_args),
    "export": Verb(STEPS["export"].summary, cmd_export, _export_args),
    "serve": Verb("serve the exported model with the local tritonserver (gRPC, HTTP, metrics) until Ctrl-C", cmd_serve, _serve_args),
    "ask": Verb("ask the served model a question about an image over gRPC; print answer and provenance", cmd_ask, _ask_args),
    "probe": Verb("health probe: one real inference over gRPC with a deadline; exit 0 healthy, 1 not", cmd_probe, _probe_args),
    "image": Verb("build the project and serving images with the local Docker engine (names from cluster.image / "
                  "cluster.serving_image, base image a build argument)", cmd_image, _image_args),
    "ui": Verb("browse the local MLflow store (runs, metrics, models) with mlflow ui on 127.0.0.1", cmd_ui, _ui_args),
    "pipeline": Verb("Kubeflow pipeline: compile the versioned IR (Kubernetes settings from the recipe's cluster: section), "
                     "submit it to a KFP host, or run it with kfp.local",
                     cmd_pipeline, _pipeline_args),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuna", description="TUNA platform: tag-augmented MLLM training, evaluation and serving.")
    parser.add_argument("--version", action="version", version=f"tuna {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, verb in VERBS.items():
        p = sub.add_parser(name, help=verb.help, description=verb.help)
        if verb.add_args:  # first: a verb's own positional (ask's question) comes before the overrides
            verb.add_args(p)
        p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE", help=f"YAML recipe (default: {DEFAULT_CONFIG})")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, e.g. world.sizes.web=500")
        p.set_defaults(func=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come anywhere (argparse alone takes positionals only in one run).
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
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
