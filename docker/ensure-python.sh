#!/bin/sh
# Makes sure the base image can build and run TUNA (Python 3.11 with venv + ensurepip, its shared libpython for the
# Triton python backend stub, the CA bundle); run as root by the Dockerfile in each stage before anything else.
# On a Debian bookworm base (python 3.11) missing pieces come from apt; any other gap fails in one line naming it
# and the command that provides a suitable base.
set -eu
fix="build a Debian bookworm base with 'make base-image' (or pass BASE_IMAGE=<an image with Python 3.11>)"

have_python() { command -v python3.11 >/dev/null 2>&1 && python3.11 -c "import venv, ensurepip" >/dev/null 2>&1; }
have_libpython() {
    python3.11 -c "import os, sys, sysconfig; d, n = sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('INSTSONAME'); \
sys.exit(not any(os.path.exists(os.path.join(p, n)) for p in (d, '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu')))"
}
apt_install() {
    command -v apt-get >/dev/null 2>&1 || { echo "error: base image has no python3.11 and no apt-get to install it; $fix" >&2; exit 1; }
    apt-get update -qq >/dev/null 2>&1 || { echo "error: no network to the Debian archive from the build (apt-get update failed); build with --network host (make image does)" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || { echo "error: apt-get could not install $* on this base; $fix" >&2; exit 1; }
    rm -rf /var/lib/apt/lists/*
}

if ! have_python; then
    apt_install python3.11 python3.11-venv libpython3.11 ca-certificates
    have_python || { echo "error: base image has no python3.11 (with venv); $fix" >&2; exit 1; }
fi
if ! have_libpython; then
    apt_install libpython3.11
    have_libpython || { echo "error: base image has no shared libpython3.11 (the Triton python backend stub links it); $fix" >&2; exit 1; }
fi
[ -s /etc/ssl/certs/ca-certificates.crt ] || apt_install ca-certificates
echo "base image ok: $(python3.11 -V)"
