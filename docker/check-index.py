"""Fails the image build in one line when the package index is out of reach (run by the Dockerfile's build stage).

Uses the CA bundle pip uses in the build (docker/build-ca/ca-certificates.crt when given, else the system's).
"""

import os
import ssl
import sys
import urllib.request

index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
bundle = "/tmp/docker/build-ca/ca-certificates.crt"
given = os.path.exists(bundle) and os.path.getsize(bundle) > 0
context = ssl.create_default_context(cafile=bundle if given else None)
try:
    urllib.request.urlopen(f"{index}/pip/", timeout=30, context=context)
except OSError as err:
    sys.exit(f"error: no network to the package index {index} from the build ({err}); build with --network host and the "
             f"host CA bundle (make image does), or --build-arg PIP_INDEX_URL=<mirror>")
