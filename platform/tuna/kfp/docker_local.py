"""``tuna pipeline run --local --docker``: kfp.local's ``DockerRunner`` set up for the project image.

Each task runs in a container of ``cluster.image`` (built by ``tuna image``): the image and the component command a
cluster pod runs. What the SubprocessRunner sees at host paths the containers see at the same paths: the data folder
read-write, the recipe's folder and every data source the recipe declares read-only (kfp.local mounts the pipeline
root itself). Containers use the host network, a 2 GiB /dev/shm (DeepSpeed's gloo ranks, tritonserver's python
backend) and get the env a cluster's Secrets would inject (MLflow, S3, Milvus) when it is set here.

:func:`task_container_fixes` works around kfp 2.17's DockerRunner reporting a failed container as SUCCESS (it
removes containers as they exit, then reads a missing container's status as 0: kubeflow/pipelines#13332, fixes
open as #13402 / #13907), and hands the folders kfp.local creates to the tasks' user when that is not the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tuna.kfp.options import ERROR_FILE_ENV, IMAGE_UID, SECRET_ENV, SECRET_OPTIONAL_ENV, PipelineError
from tuna.recipe import Recipe

IMAGE_USER = f"{IMAGE_UID}:{IMAGE_UID}"  # the project image's user, what a cluster pod runs as
ROOT_LABEL = "tuna.kfp/pipeline-root"   # label on every task container: the run's pipeline root (find leftovers by it)
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", *(k for keys in (*SECRET_ENV.values(), *SECRET_OPTIONAL_ENV.values()) for k in keys))


def parse_user(user: str) -> tuple[int, int]:
    """``"UID:GID"`` (or ``"UID"``: gid = uid) as numbers; PipelineError naming the value otherwise."""
    parts = user.split(":")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise PipelineError(f"--docker-user {user!r}: give numeric UID:GID, e.g. 1000:1000 (the image's user)")
    uid = int(parts[0])
    return uid, int(parts[1]) if len(parts) == 2 else uid


def writable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid:gid`` may create files in ``path`` (or, when it does not exist yet, in its nearest existing
    parent) by the permission bits alone; uid 0 always may."""
    while not path.exists() and path != path.parent:
        path = path.parent
    if uid == 0:
        return True
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def docker_mounts(cfg: Recipe, config: Path, pipeline_root: Path) -> list[dict[str, Any]]:
    """Bind mounts (Docker API form) that give a task container what the subprocess runner sees at the same paths:
    the data folder read-write, the recipe's folder and each data source the recipe declares read-only. The
    pipeline root is kfp.local's own mount. Raises PipelineError for a relative source path (no host path to
    mount)."""
    from tuna.sources import sources

    writable = [cfg.data_dir.resolve()]
    readonly = [config.resolve().parent]
    for src in sources(cfg).all():
        if src.from_world:
            continue
        for path in (src.path, src.image_root):
            if path is None:
                continue
            if not path.is_absolute():
                raise PipelineError(f"data.{src.name}: path {str(path)!r} is relative; the task containers see host "
                                    f"paths only when absolute: give the absolute path")
            readonly.append(path if path.is_dir() else path.parent)
    mounts: list[dict[str, Any]] = []
    seen: list[Path] = []
    root = pipeline_root.resolve()
    for path, ro in [*((p, False) for p in writable), *((p, True) for p in readonly)]:
        if any(path == s or s in path.parents for s in seen) or path == root or root in path.parents:
            continue  # already visible through a mount holding it
        seen.append(path)
        mounts.append({"Type": "bind", "Source": str(path), "Target": str(path), "ReadOnly": ro})
    return mounts


def docker_runner(cfg: Recipe, config: Path, pipeline_root: Path, error_file: Path, user: str | None = None) -> Any:
    """``kfp.local.DockerRunner`` for the project image, the tasks running as ``user`` (default: the caller's
    uid:gid, so what they write into the data folder is the caller's; ``1000:1000`` is the image's own user, as a
    cluster pod runs; a user other than the image's gets HOME=/tmp). Raises PipelineError in one line when there is
    no Docker engine, no image, or the data folder is not writable by ``user``."""
    from kfp import local

    from tuna.images import ImageError, docker_engine, image_exists

    user = user or f"{os.getuid()}:{os.getgid()}"
    uid, gid = parse_user(user)
    data_dir = cfg.data_dir.resolve()
    if not writable_by(data_dir, uid, gid):
        raise PipelineError(f"run.data_dir {data_dir} is not writable by --docker-user {user}; `chown -R {uid}:{gid} "
                            f"{data_dir}` or run the tasks as yourself (drop --docker-user)")
    if uid != os.getuid() and os.getuid() != 0:
        raise PipelineError(f"--docker-user {user} differs from yours ({os.getuid()}): only root can hand the pipeline "
                            f"folders to another user; drop --docker-user")
    try:
        docker_engine()
    except ImageError as err:
        raise PipelineError(f"--docker: {err}") from None
    if not image_exists(cfg.cluster.image):
        raise PipelineError(f"--docker: no image {cfg.cluster.image} (cluster.image) in the Docker engine; build it "
                            f"with `tuna image --config {config}` (or `make image`)")
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env[ERROR_FILE_ENV] = str(error_file)
    if f"{uid}:{gid}" != IMAGE_USER:
        env["HOME"] = "/tmp"
    return local.DockerRunner(mounts=docker_mounts(cfg, config, pipeline_root), network_mode="host", shm_size="2g",
                              user=f"{uid}:{gid}", environment=env,
                              labels={"app.kubernetes.io/part-of": "tuna", ROOT_LABEL: str(pipeline_root.resolve())})


def _hand_over(root: Path, uid: int, gid: int) -> None:
    """Give ``uid:gid`` the folders under ``root`` that the caller owns (kfp.local makes each run's and task's
    folders as the caller before the container starts)."""
    me = os.getuid()
    for folder, _, _ in os.walk(root):
        if os.stat(folder).st_uid == me:
            os.chown(folder, uid, gid)


def task_name(command: Sequence[str]) -> str:
    """The pipeline task a kfp.local container command runs: the folder of its executor output file."""
    for flag, value in zip(command, command[1:], strict=False):
        if flag == "--executor_input":
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return Path(json.loads(value)["outputs"]["outputFile"]).parent.name
    return "task"


def exit_line(task: str, status: int, last_lines: Sequence[str]) -> str:
    """One line for a task container that exited with ``status`` without leaving its own error line."""
    why = " (killed: docker kill, or out of memory)" if status == 137 else ""
    tail = " | ".join(line.strip() for line in last_lines if line.strip())
    return f"{task}: container exited with status {status}{why}; its last log lines: {tail or '(none)'}"


@contextlib.contextmanager
def task_container_fixes(runner: Any) -> Iterator[None]:
    """While active, kfp.local runs each task container of ``runner`` without auto-removal, reads its real exit
    status, then removes it (a failed task fails: kubeflow/pipelines#13332); a container that dies without leaving
    its task's one-line error (killed, out of memory) leaves :func:`exit_line` with its last log lines in the error
    file instead. When the runner's user is not the caller, the pipeline root's folders are handed to that user
    before each container starts."""
    import docker
    from kfp.local import docker_task_handler as handler

    uid, gid = parse_user(runner.container_run_args["user"])
    error_file = Path(runner.container_run_args["environment"][ERROR_FILE_ENV])

    def run_container(client: Any, image: str, command: list[str], volumes: dict[str, Any], **args: Any) -> int:
        if uid != os.getuid():
            for source in volumes:
                _hand_over(Path(source), uid, gid)
        container = client.containers.run(image=handler.add_latest_tag_if_not_present(image), command=command,
                                           detach=True, stdout=True, stderr=True, volumes=volumes, **args)
        last: deque[str] = deque(maxlen=5)
        try:
            for line in container.logs(stream=True):
                text = line.decode(errors="replace")
                print(text, end="")
                if text.strip():
                    last.append(text)
            status = int(container.wait().get("StatusCode", 1))
            if status != 0 and not (error_file.is_file() and error_file.read_text(encoding="utf-8").strip()):
                error_file.write_text(exit_line(task_name(command), status, list(last)) + "\n", encoding="utf-8")
            return status
        finally:
            try:
                container.remove(force=True)
            except docker.errors.APIError as err:  # the status is known; a leftover container is only reported
                print(f"could not remove task container {container.short_id}: {err}")

    original = handler.run_docker_container
    handler.run_docker_container = run_container
    try:
        yield
    finally:
        handler.run_docker_container = original


__all__ = ["FORWARDED_ENV", "IMAGE_USER", "ROOT_LABEL", "docker_mounts", "docker_runner", "exit_line", "parse_user",
           "task_container_fixes", "task_name", "writable_by"]
