#!/bin/sh
# Checks, as root in docker/serving-trtllm.Dockerfile, that the base image is one `tuna` can be added to without
# changing it: python3 is 3.11 or 3.12 (tuna's requires-python) with pip and torch, tritonserver is on PATH, the python
# backend and its stub are in /opt/tritonserver/backends/python, and (REQUIRE_TRTLLM=1) tensorrt_llm imports. Each gap
# fails in one line naming it and the base that has it.
set -eu
ngc="use NGC's nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3 (25.12: Python 3.12) as TRTLLM_BASE_IMAGE"
fail() { echo "error: base image $1; $ngc" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || fail "has no python3"
python3 -c "import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))" \
    || fail "has $(python3 -V 2>&1) but tuna runs on Python 3.11 or 3.12"
python3 -m pip --version >/dev/null 2>&1 || fail "has no pip for $(python3 -V 2>&1)"
python3 -c "import torch" 2>/dev/null || fail "has no torch for $(python3 -V 2>&1)"
command -v tritonserver >/dev/null 2>&1 || fail "has no tritonserver on PATH"
[ -e /opt/tritonserver/backends/python/triton_python_backend_stub ] \
    || fail "has no python backend stub in /opt/tritonserver/backends/python"
if [ "${REQUIRE_TRTLLM:-1}" = 1 ]; then
    python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorrt_llm') is None)" \
        || fail "has no tensorrt_llm (build a stand-in on purpose with --build-arg REQUIRE_TRTLLM=0)"
fi
echo "base image ok: $(python3 -V 2>&1), torch $(python3 -c 'import torch; print(torch.__version__)'), tensorrt_llm $(python3 -c 'import importlib.util as u; print("yes" if u.find_spec("tensorrt_llm") else "no")')"
