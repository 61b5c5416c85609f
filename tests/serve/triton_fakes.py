"""A stand-in for ``triton_python_backend_utils`` (the module Triton's python stub provides): the parts the TUNA steps
use, so the steps run in-process in tests."""

from __future__ import annotations

import types
from typing import Any

import numpy as np


class FakePb(types.ModuleType):
    """The parts of ``triton_python_backend_utils`` the steps use."""

    class TritonError:
        INVALID_ARG, UNAVAILABLE, INTERNAL = "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

        def __init__(self, message: str, code: str) -> None:
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors: list | None = None, error: Any = None) -> None:
            self.outputs = {t.name: t.value for t in output_tensors or []}
            self.error = error

    class Tensor:
        def __init__(self, name: str, value: np.ndarray) -> None:
            self.name, self.value = name, value

        def as_numpy(self) -> np.ndarray:
            return self.value

    class Logger:
        lines: list[str] = []

        @classmethod
        def log_warn(cls, message: str) -> None:
            cls.lines.append(message)

    TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

    @staticmethod
    def get_input_tensor_by_name(request: Any, name: str) -> Any:
        """``request``: a dict of arrays, or an object holding them in ``.tensors``."""
        tensors = request if isinstance(request, dict) else request.tensors
        return FakePb.Tensor(name, tensors[name]) if name in tensors else None
