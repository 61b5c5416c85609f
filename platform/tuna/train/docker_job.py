"""Run a rendered TrainJob with Docker the way Kubeflow Trainer's MPI runtime runs it: ``tuna train --launcher docker``.

The TrainJob :func:`tuna.train.jobs.render_trainjob` renders and the ClusterTrainingRuntime it references
(:func:`tuna.train.jobs.render_runtime`) become containers of the project image on a Docker network made for the
job, with what the Trainer controller and its MPI plugin would add on a cluster (trainer v2.3,
``pkg/runtime/framework/plugins/mpi``):

* one container per pod, named and reachable as the JobSet pods are: ``<job>-<replicatedJob>-0-<i>``, with the
  DNS alias ``<job>-<replicatedJob>-0-<i>.<job>`` (the job's headless subdomain); ``runLauncherAsNode`` makes the
  launcher node 0 and leaves ``numNodes - 1`` node pods;
* the hostfile at ``/etc/mpi/hostfile`` (one line per node pod in the runtime's replicated-job order,
  ``<endpoint> slots=<numProcPerNode>``), mounted read-only in the launcher;
* an SSH key pair (ECDSA P-521 in PEM, as the plugin's Secret) mounted at ``sshAuthMountPath`` as ``id_rsa``,
  ``id_rsa.pub`` and ``authorized_keys`` in every pod, owned by root and readable by group 1000 (``fsGroup``);
* the launcher's env: the TrainJob's ``trainer.env`` (secretKeyRef values from ``secrets``) plus the plugin's
  ``OMPI_MCA_orte_default_hostfile``, ``OMPI_MCA_orte_keep_fqdn_hostnames``, ``OMPI_MCA_orte_set_default_slots``
  and ``OMPI_MCA_plm_rsh_args``; its command is ``trainer.command`` + ``trainer.args`` verbatim;
* node pods run the runtime's own command (sshd on 2222 as uid 1000) and start once it answers (``dependsOn
  node Ready``, the runtime's tcpSocket readiness probe);
* volumes from the TrainJob's runtimePatches: a memory emptyDir at /dev/shm becomes ``--shm-size``, a
  PersistentVolumeClaim a bind mount of a host folder (``claims``; by default the host folder at the mount path
  itself, so paths in the MLflow store and the checkpoints mean the same on the host and in every container);
* resources: the per-node memory limit, and the CPU limit capped at this machine's cores.

The recipe the job names (``--config <workdir>/configs/<recipe>``) is baked into the image on a cluster; here the
caller's file is mounted there read-only (``files``), so the ranks read what the caller rendered from. Everything
is removed by name at the end (containers, network, keys), whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.recipe import Recipe
from tuna.train.jobs import MPI_HOSTFILE, TRAINJOB

SSH_PORT = 2222                      # the runtime's node command and readiness probe
POD_GID = 1000                       # the runtime's fsGroup: group of the mounted Secret files
HOSTFILE_DIR = MPI_HOSTFILE.rsplit("/", 1)[0]
# The MPI plugin's env on the launcher (constants.OpenMPIEnv*); set_default_slots is numProcPerNode.
RSH_ARGS = "-o ConnectionAttempts=10"
LABEL = "tuna-platform/docker-job"   # every container carries it (value: the job name)


class DockerJobError(TunaError):
    """The job cannot be run with Docker (no engine or image, a field the Docker runner cannot translate, a node
    that never became ready, a launcher still running at the timeout); the message names what and the fix."""


@dataclass(frozen=True)
class Mount:
    """A bind mount: ``host`` folder or file at ``path`` in the container."""

    host: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class Container:
    """One pod of the job as a ``docker run``: its name doubles as the pod hostname."""

    name: str
    alias: str
    role: str
    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    user: str | None = None
    groups: list[int] = field(default_factory=list)
    shm_size: str | None = None
    memory: str | None = None
    cpus: str | None = None


# ------------------------------------------------------------------------------------------ pure parts


def _job_spec(runtime: dict[str, Any], name: str) -> dict[str, Any]:
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        if job["name"] == name:
            return job
    raise DockerJobError(f"runtime {runtime['metadata']['name']} has no replicated job {name!r}")


def _mpi(runtime: dict[str, Any]) -> dict[str, Any]:
    mpi = (runtime["spec"].get("mlPolicy") or {}).get("mpi")
    if not mpi:
        raise DockerJobError(f"runtime {runtime['metadata']['name']} has no mlPolicy.mpi: only the MPI runtime runs here")
    if mpi.get("mpiImplementation", "OpenMPI") != "OpenMPI":
        raise DockerJobError(f"mpiImplementation {mpi['mpiImplementation']!r}: the Trainer supports OpenMPI only")
    return mpi


def slots(obj: dict[str, Any], runtime: dict[str, Any]) -> int:
    """Ranks per pod: the TrainJob's ``numProcPerNode``, else the runtime's."""
    return int(obj["spec"]["trainer"].get("numProcPerNode") or _mpi(runtime).get("numProcPerNode") or 1)


def pods(obj: dict[str, Any], runtime: dict[str, Any]) -> list[tuple[str, str]]:
    """(replicated job, hostname) of every pod, in the runtime's replicated-job order (the hostfile's order).

    ``runLauncherAsNode``: one launcher pod and ``max(numNodes - 1, 1)`` node pods; otherwise ``numNodes`` nodes.
    """
    job = obj["metadata"]["name"]
    num_nodes = int(obj["spec"]["trainer"].get("numNodes") or runtime["spec"]["mlPolicy"].get("numNodes") or 1)
    as_node = bool(_mpi(runtime).get("runLauncherAsNode"))
    out = []
    for rjob in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        count = {"launcher": 1, "node": max(num_nodes - 1, 1) if as_node else num_nodes}.get(rjob["name"])
        if count is None:
            raise DockerJobError(f"replicated job {rjob['name']!r}: the MPI runtime has only launcher and node")
        out += [(rjob["name"], f"{job}-{rjob['name']}-0-{i}") for i in range(count)]
    return out


def hostfile(obj: dict[str, Any], runtime: dict[str, Any]) -> str:
    """The MPI plugin's OpenMPI hostfile: ``<pod endpoint> slots=<numProcPerNode>`` per node pod (the launcher too
    when it runs as a node), endpoints ``<hostname>.<job>`` in the runtime's replicated-job order."""
    job, n = obj["metadata"]["name"], slots(obj, runtime)
    as_node = bool(_mpi(runtime).get("runLauncherAsNode"))
    return "".join(f"{host}.{job} slots={n}\n" for rjob, host in pods(obj, runtime) if rjob == "node" or as_node)


def launcher_command(obj: dict[str, Any]) -> list[str]:
    """The launcher container's command: the TrainJob's ``trainer.command`` then ``trainer.args``, as rendered."""
    trainer = obj["spec"]["trainer"]
    command = list(trainer.get("command") or []) + list(trainer.get("args") or [])
    if not command:
        raise DockerJobError("the TrainJob has no trainer.command: the runtime's launcher has no command of its own")
    return command


def config_path(obj: dict[str, Any]) -> str:
    """The recipe path the ranks read (the value after ``--config`` in the launcher's command)."""
    command = launcher_command(obj)
    try:
        return command[command.index("--config") + 1]
    except (ValueError, IndexError):
        raise DockerJobError("the TrainJob's command names no --config recipe") from None


def launcher_env(obj: dict[str, Any], runtime: dict[str, Any],
                 secrets: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """The launcher's environment: ``trainer.env`` (secretKeyRef values looked up in ``secrets``: Secret name ->
    key -> value; optional keys may be missing) then the MPI plugin's four OpenMPI variables."""
    env: dict[str, str] = {}
    for item in obj["spec"]["trainer"].get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            raise DockerJobError(f"env {item['name']}: only value and valueFrom.secretKeyRef run under Docker")
        value = (secrets or {}).get(ref["name"], {}).get(ref["key"])
        if value is None and not ref.get("optional"):
            raise DockerJobError(f"env {item['name']}: Secret {ref['name']!r} key {ref['key']!r} was not given; "
                                 f"pass it in secrets (a pod would not start without it)")
        if value is not None:
            env[item["name"]] = value
    env.update({"OMPI_MCA_orte_default_hostfile": MPI_HOSTFILE, "OMPI_MCA_orte_keep_fqdn_hostnames": "true",
                "OMPI_MCA_orte_set_default_slots": str(slots(obj, runtime)), "OMPI_MCA_plm_rsh_args": RSH_ARGS})
    return env


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(q: str) -> int:
    """A Kubernetes memory quantity (``8Gi``, ``500M``, ``1024``) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|)", str(q).strip())
    if not m:
        raise DockerJobError(f"memory quantity {q!r}: expected a number with an optional k/M/G/T(i) suffix")
    return int(float(m[1]) * _UNITS[m[2]])


def cpu_limit(q: str, cores: int) -> str:
    """A Kubernetes CPU quantity (``4``, ``500m``) as ``docker --cpus``, capped at ``cores`` (Docker refuses more)."""
    text = str(q).strip()
    value = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return f"{min(value, float(cores)):g}"


def _patch(obj: dict[str, Any], rjob: str) -> dict[str, Any]:
    """The pod spec the TrainJob's runtimePatches give replicated job ``rjob`` (empty when none)."""
    for patch in obj["spec"].get("runtimePatches") or []:
        for job in ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec", {}).get("replicatedJobs") or []:
            if job.get("name") == rjob:
                return job["template"]["spec"]["template"].get("spec") or {}
    return {}


def _volumes(obj: dict[str, Any], rjob: str, claims: Mapping[str, str | Path]) -> tuple[list[Mount], str | None]:
    """Bind mounts and the /dev/shm size of ``rjob``'s pods, from the runtimePatches' volumes and the "node" mounts."""
    spec = _patch(obj, rjob)
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts, shm = [], None
    for container in spec.get("containers") or []:
        if container.get("name") != "node":
            continue
        for vm in container.get("volumeMounts") or []:
            vol = volumes.get(vm["name"])
            if vol is None:
                raise DockerJobError(f"{rjob}: volumeMount {vm['name']!r} names no volume")
            if "emptyDir" in vol and vol["emptyDir"].get("medium") == "Memory" and vm["mountPath"] == "/dev/shm":
                shm = str(quantity_bytes(vol["emptyDir"].get("sizeLimit") or "64Mi"))
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                host = str(claims.get(claim, vm["mountPath"]))
                mounts.append(Mount(host, vm["mountPath"], bool(vm.get("readOnly"))))
            else:
                raise DockerJobError(f"{rjob}: volume {vm['name']!r} ({', '.join(k for k in vol if k != 'name')}): "
                                     f"only PVCs and a memory emptyDir at /dev/shm run under Docker")
    return mounts, shm


def plan(obj: dict[str, Any], runtime: dict[str, Any], *, ssh_dir: str | Path, hostfile_dir: str | Path,
         claims: Mapping[str, str | Path] | None = None, files: Mapping[str, str | Path] | None = None,
         secrets: Mapping[str, Mapping[str, str]] | None = None, cores: int | None = None) -> list[Container]:
    """The job's containers, nodes first (they must be ready before the launcher starts), the launcher last.

    ``ssh_dir`` holds the key files, ``hostfile_dir`` the hostfile; ``claims`` maps a PVC name to a host folder
    (default: the mount path itself); ``files`` maps a container path to a host file mounted read-only everywhere.
    """
    if obj.get("kind") != TRAINJOB.kind:
        raise DockerJobError(f"kind {obj.get('kind')!r}: only a TrainJob runs under Docker")
    job, mpi, trainer = obj["metadata"]["name"], _mpi(runtime), obj["spec"]["trainer"]
    cores = cores or os.cpu_count() or 1
    limits = (trainer.get("resourcesPerNode") or {}).get("limits") or {}
    extra = [Mount(str(host), path, True) for path, host in (files or {}).items()]
    out = []
    for rjob, host in pods(obj, runtime):
        pod = _job_spec(runtime, rjob)["template"]["spec"]["template"]["spec"]
        main = next((c for c in pod["containers"] if c["name"] == "node"), None)
        if main is None:
            raise DockerJobError(f"runtime job {rjob!r} has no container named node")
        mounts, shm = _volumes(obj, rjob, claims or {})
        mounts = [Mount(str(ssh_dir), mpi.get("sshAuthMountPath") or "/root/.ssh", True), *mounts, *extra]
        uid = (main.get("securityContext") or {}).get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser"))
        group = (pod.get("securityContext") or {}).get("fsGroup")
        if rjob == "launcher":
            mounts.insert(1, Mount(str(hostfile_dir), HOSTFILE_DIR, True))
            image, command, env = trainer.get("image") or main["image"], launcher_command(obj), launcher_env(obj, runtime, secrets)
        else:  # the trainer's image, command and env go to the ancestor ("trainer") job only: the launcher
            image, command, env = main["image"], [*main.get("command", []), *main.get("args", [])], {}
            if not command:
                raise DockerJobError(f"runtime job {rjob!r}: the node container has no command")
        out.append(Container(
            name=host, alias=f"{host}.{job}", role=rjob, image=image, command=command, env=env, mounts=mounts,
            user=None if uid is None else str(uid), groups=[] if group is None else [int(group)], shm_size=shm,
            memory=str(quantity_bytes(limits["memory"])) if "memory" in limits else None,
            cpus=cpu_limit(limits["cpu"], cores) if "cpu" in limits else None))
    return sorted(out, key=lambda c: c.role == "launcher")


def run_args(c: Container, network: str, job: str) -> list[str]:
    """``docker run -d ...`` for one container (the entrypoint is the command's first word, the rest its args)."""
    args = ["docker", "run", "-d", "--name", c.name, "--hostname", c.name, "--network", network,
            "--network-alias", c.alias, "--label", f"{LABEL}={job}", "--label", f"tuna-platform/role={c.role}"]
    if c.user is not None:
        args += ["--user", c.user]
    for g in c.groups:
        args += ["--group-add", str(g)]
    for flag, value in (("--shm-size", c.shm_size), ("--memory", c.memory), ("--cpus", c.cpus)):
        if value:
            args += [flag, value]
    for m in c.mounts:
        args += ["-v", f"{m.host}:{m.path}" + (":ro" if m.read_only else "")]
    for k, v in c.env.items():
        args += ["-e", f"{k}={v}"]
    return [*args, "--entrypoint", c.command[0], c.image, *c.command[1:]]


# ------------------------------------------------------------------------------------------ running


def _docker(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def write_ssh_keys(folder: Path) -> None:
    """The MPI plugin's Secret as files: an ECDSA P-521 key (PEM) as ``id_rsa``, its public key as ``id_rsa.pub``
    and ``authorized_keys``; owned by root, group 1000, mode 0640 (the Secret volume with fsGroup 1000)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP521R1())
    private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption())
    public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b"\n"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("id_rsa", private), ("id_rsa.pub", public), ("authorized_keys", public)):
        (folder / name).write_bytes(data)
    _give_to_pod_group(folder, 0o640)


def _give_to_pod_group(folder: Path, mode: int) -> None:
    """Root-owned, group 1000 (fsGroup) when we are root; else readable by all (ssh refuses a private key its own
    user can share, so the container's uid must not own it: it does not, unless we run as uid 1000 -> 0600)."""
    root = os.geteuid() == 0
    for path in [folder, *folder.iterdir()]:
        if root:
            os.chown(path, 0, POD_GID)
        dmode = 0o750 if root else 0o755
        fmode = mode if root else (0o600 if os.geteuid() == POD_GID else 0o644)
        path.chmod(dmode if path.is_dir() else fmode)


class DockerTrainJob:
    """One TrainJob run by Docker: :meth:`start`, then :meth:`wait` (or :meth:`kill` a pod), always :meth:`close`.

    Use as a context manager; ``log`` receives the launcher's output lines as they come.
    """

    def __init__(self, obj: dict[str, Any], runtime: dict[str, Any], *, claims: Mapping[str, str | Path] | None = None,
                 files: Mapping[str, str | Path] | None = None, secrets: Mapping[str, Mapping[str, str]] | None = None,
                 log: Callable[[str], None] = print, ready_timeout: float = 60.0) -> None:
        self.obj, self.runtime, self.name = obj, runtime, obj["metadata"]["name"]
        self.network = f"{self.name}-net"
        self.claims, self.files, self.secrets, self.log, self.ready_timeout = claims, files, secrets, log, ready_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.containers: list[Container] = []
        self.lines: list[str] = []
        self._follower: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> DockerTrainJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def launcher(self) -> Container:
        return next(c for c in self.containers if c.role == "launcher")

    def start(self) -> None:
        """Network, keys, hostfile, node containers (wait until sshd answers), then the launcher."""
        from tuna.images import ImageError, docker_engine, image_exists

        try:
            docker_engine()
        except ImageError as err:
            raise DockerJobError(str(err)) from None
        (self.tmp / "mpi").mkdir()
        (self.tmp / "mpi" / "hostfile").write_text(hostfile(self.obj, self.runtime), encoding="utf-8")
        _give_to_pod_group(self.tmp / "mpi", 0o444)
        write_ssh_keys(self.tmp / "ssh")
        self.tmp.chmod(0o755)
        self.containers = plan(self.obj, self.runtime, ssh_dir=self.tmp / "ssh", hostfile_dir=self.tmp / "mpi",
                               claims=self.claims, files=self.files, secrets=self.secrets)
        for image in sorted({c.image for c in self.containers}):
            if not image_exists(image):
                raise DockerJobError(f"no image {image} in the Docker engine; build it with `make image`")
        made = _docker("network", "create", "--label", f"{LABEL}={self.name}", self.network)
        if made.returncode != 0:
            raise DockerJobError(f"docker network create {self.network}: {made.stderr.strip()}")
        for c in self.containers:
            if c.role == "launcher":
                self._wait_ready([n for n in self.containers if n.role != "launcher"])
            done = subprocess.run(run_args(c, self.network, self.name), capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise DockerJobError(f"docker run {c.name}: {done.stderr.strip()}")
        self._follower = subprocess.Popen(["docker", "logs", "-f", self.launcher.name], stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._follower is not None and self._follower.stdout is not None
        for line in self._follower.stdout:
            self.lines.append(line.rstrip("\n"))
            self.log(self.lines[-1])

    def _wait_ready(self, nodes: Sequence[Container]) -> None:
        """The runtime's readiness probe (tcpSocket on 2222) on every node, within ``ready_timeout`` seconds."""
        deadline = time.monotonic() + self.ready_timeout
        for c in nodes:
            while True:
                probe = _docker("exec", c.name, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{SSH_PORT}", timeout=30)
                if probe.returncode == 0:
                    break
                if self.state(c.name) != "running" or time.monotonic() > deadline:
                    tail = _docker("logs", "--tail", "20", c.name)
                    raise DockerJobError(f"node {c.name} did not listen on port {SSH_PORT} within {self.ready_timeout:g} s "
                                         f"({self.state(c.name)}): {(tail.stdout + tail.stderr).strip()[-1500:]}")
                time.sleep(0.5)

    def state(self, name: str) -> str:
        """The container's state (running, exited, ...) or "absent"."""
        done = _docker("inspect", "--format", "{{.State.Status}}", name)
        return done.stdout.strip() if done.returncode == 0 else "absent"

    def kill(self, role: str = "node", index: int = 0) -> str:
        """SIGKILL the ``index``-th pod of ``role`` (a node failing mid-stage); returns its name."""
        name = [c.name for c in self.containers if c.role == role][index]
        _docker("kill", name)
        return name

    def wait(self, timeout: float) -> int:
        """The launcher's exit code; raises DockerJobError (the job is left running for :meth:`close`) at the timeout."""
        try:
            done = _docker("wait", self.launcher.name, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DockerJobError(f"the launcher {self.launcher.name} was still running after {timeout:g} s") from None
        if self._reader is not None:
            self._reader.join(timeout=10)
        try:
            return int(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise DockerJobError(f"docker wait {self.launcher.name}: {done.stderr.strip()}") from None

    def close(self) -> None:
        """Remove the job's containers and network by name, stop following the logs, delete the keys."""
        names = [c.name for c in self.containers]
        if not names:  # start failed before planning: remove whatever may carry the pods' names
            with contextlib.suppress(DockerJobError, KeyError):
                names = [h for _, h in pods(self.obj, self.runtime)]
        if names:
            with contextlib.suppress(subprocess.TimeoutExpired):
                _docker("rm", "-f", *names, timeout=120)
        if self._follower is not None and self._follower.poll() is None:
            self._follower.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._follower.wait(timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            _docker("network", "rm", self.network, timeout=60)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def running(obj: dict[str, Any], runtime: dict[str, Any], **kwargs: Any) -> Iterator[DockerTrainJob]:
    """A started :class:`DockerTrainJob`, closed (containers and network removed) when the block ends."""
    job = DockerTrainJob(obj, runtime, **kwargs)
    try:
        job.start()
        yield job
    finally:
        job.close()


# ------------------------------------------------------------------------------------------ one stage


def docker_overrides(cfg: Recipe) -> list[str]:
    """The data PVC is the host's data folder, mounted at its own absolute path in every container: the ranks
    write where the host reads, and paths in the MLflow store (artifact locations) mean the same everywhere."""
    data = Path(cfg.run.data_dir).resolve()
    out = [f"run.data_dir={data}", f"cluster.data_mount={data}"]
    return out if cfg.cluster.data_pvc else [*out, "cluster.data_pvc=tuna-data"]


def stage_job(recipe: str | Path, stage: int, variant: str = "tuna", overrides: Sequence[str] = (), *,
              resume: bool = False, parent_run_id: str | None = None,
              name: str | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(TrainJob, runtime, files to mount) for one stage: rendered and validated by :mod:`tuna.train.jobs` from
    ``recipe`` + ``overrides`` + :func:`docker_overrides`; the recipe file is mounted where the job reads it."""
    from tuna.recipe import load_recipe
    from tuna.train.jobs import render_runtime, render_trainjob, validate

    extra = docker_overrides(load_recipe(recipe, list(overrides)))
    overrides = [*overrides, *extra]
    cfg = load_recipe(recipe, overrides)
    data = Path(cfg.run.data_dir)
    if not data.is_dir() or not (data.stat().st_uid == POD_GID or data.stat().st_mode & 0o002):
        raise DockerJobError(f"run.data_dir {data} must be a folder the containers' uid {POD_GID} can write "
                             f"(the chart's fsGroup); run `chown -R {POD_GID}:{POD_GID} {data}`")
    obj = render_trainjob(cfg, stage, variant, overrides, recipe=recipe, resume=resume, name=name,
                          parent_run_id=parent_run_id)
    validate(obj)
    runtime = render_runtime(cfg)
    validate(runtime)
    return obj, runtime, {config_path(obj): str(Path(recipe).resolve())}


def run_stage(recipe: str | Path, stage: int, variant: str = "tuna", overrides: Sequence[str] = (), *,
              resume: bool = False, parent_run_id: str | None = None, timeout: float | None = None,
              log: Callable[[str], None] = print) -> int:
    """Train one stage as the TrainJob would on a cluster, in Docker; returns the launcher's exit code.

    ``timeout`` defaults to ``cluster.follow_timeout``; the containers are removed when it passes.
    """
    from tuna.recipe import load_recipe

    obj, runtime, files = stage_job(recipe, stage, variant, overrides, resume=resume, parent_run_id=parent_run_id)
    limit = timeout if timeout is not None else load_recipe(recipe, list(overrides)).cluster.follow_timeout
    log(f"TrainJob {obj['metadata']['name']}: {len(pods(obj, runtime))} containers of {obj['spec']['trainer']['image']} "
        f"on network {obj['metadata']['name']}-net, {obj['spec']['trainer']['numNodes']} x "
        f"{obj['spec']['trainer']['numProcPerNode']} ranks")
    with running(obj, runtime, files=files, log=log) as job:
        return job.wait(limit)


__all__ = ["Container", "DockerJobError", "DockerTrainJob", "Mount", "config_path", "docker_overrides", "hostfile",
           "launcher_command", "launcher_env", "plan", "pods", "run_args", "run_stage", "running", "stage_job",
           "write_ssh_keys"]
