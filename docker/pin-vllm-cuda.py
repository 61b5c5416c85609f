"""Write constraints-vllm-<variant>.txt: the versions pip resolves for PyPI's CUDA vLLM on PyPI's torch, for Linux
x86_64 / CPython 3.11, without installing anything and without a GPU (pip's --dry-run --report for that platform).

    python docker/pin-vllm-cuda.py [--vllm 0.32.0] [--torch <pyproject pin>] [--variant <its PyPI build>]   # `make vllm-cuda-constraints`

The host's pip configuration (local find-links, extra indexes, a global constraints file) is ignored: the pins must be
what the image build gets from PyPI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
from tuna.images import PYPI_TORCH_VARIANT, torch_version  # noqa: E402  (the torch pin and its PyPI CUDA build: one place)

HEADER = """# The versions of the CUDA vLLM serving venv (Dockerfile stage vllm with TORCH_VARIANT={variant}: PyPI's vllm {vllm} on
# PyPI's torch {torch}, its CUDA build). Resolved by pip for Linux x86_64 / CPython 3.11 (no GPU needed to resolve):
# `make vllm-cuda-constraints` (docker/pin-vllm-cuda.py). Refresh when VLLM_VERSION or torch moves, then rebuild the image.
# (torchvision, torchaudio, torchcodec are uninstalled after the install, as in the CPU venv: nothing we run needs them.)
"""
# glibc of Debian bookworm is 2.36: every manylinux tag up to it (pip does not widen an explicit --platform itself).
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in range(36, 4, -1)] + ["manylinux2014_x86_64", "manylinux2010_x86_64"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm", default="0.32.0")
    ap.add_argument("--torch", default=torch_version(), help="default: the torch pyproject.toml pins")
    ap.add_argument("--variant", default=None, help="default: the CUDA build PyPI's torch is (tuna.images.PYPI_TORCH_VARIANT)")
    ap.add_argument("--index-url", default="https://pypi.org/simple")
    args = ap.parse_args()
    args.variant = args.variant or PYPI_TORCH_VARIANT[args.torch]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report),
               "--index-url", args.index_url, "--python-version", "3.11", "--only-binary=:all:",
               *[a for p in PLATFORMS for a in ("--platform", p)], f"vllm=={args.vllm}", f"torch=={args.torch}"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"error: pip could not resolve vllm=={args.vllm} with torch=={args.torch}: {last}", file=sys.stderr)
            return 1
        install = json.loads(report.read_text())["install"]
    pins = sorted((i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"]) for i in install)
    out = REPO / f"constraints-vllm-{args.variant}.txt"
    out.write_text(HEADER.format(variant=args.variant, vllm=args.vllm, torch=args.torch) + "".join(f"{n}=={v}\n" for n, v in pins))
    print(f"{out.name}: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
