"""TrainJob progress (Kubeflow Trainer's status endpoint, KEP-2779): the payload against the kept TrainJob CRD's
``status.trainerStatus`` schema, the real reporter posting over HTTPS (a self-signed CA made by openssl, like the
controller's webhook CA) to a local server on 127.0.0.1 standing in for the controller, its rate limit, token
re-reading and failure handling, and the line ``follow`` prints.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support import SMOKE
from tuna.recipe import load_recipe
from tuna.train import jobs, progress
from tuna.train.jobs import ManifestInvalid

STATUS_PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/tuna/trainjobs/job-1/status"


def with_status(trainer_status: dict[str, Any]) -> dict[str, Any]:
    obj = jobs.render_trainjob(load_recipe(SMOKE), 1, "tuna", recipe=SMOKE, name="job-1")
    obj["status"] = {"trainerStatus": trainer_status}
    return obj


# ---------------------------------------------------------------------------------------------- payload


@pytest.mark.parametrize("percent, remaining, metrics", [
    (45.7, 3600.4, {"loss": 0.234712345, "lr": 2e-05}),
    (0.0, None, {}),
    (100.0, 0.0, {"loss": 1e-9}),
    (250.0, -5.0, {"x" * 80: "y" * 80}),                      # clamped and cut to the CRD's limits
    (float("nan"), float("inf"), {f"m{i}": float(i) for i in range(300)}),
])
def test_payload_satisfies_the_crds_trainer_status_schema(percent: float, remaining: float | None,
                                                          metrics: dict[str, Any]) -> None:
    body = progress.trainer_status(percent, remaining, metrics, datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC))
    assert set(body) == {"trainerStatus"}
    status = body["trainerStatus"]
    jobs.validate(with_status(status))  # the kept CRD's openAPI schema (strict) and its CEL rules
    assert status["lastUpdatedTime"] == "2026-12-04T10:00:00Z"
    assert 0 <= status.get("progressPercentage", 0) <= 100 and len(status.get("metrics", [])) <= 256


def test_payload_values_are_the_upstream_shape() -> None:
    status = progress.trainer_status(45.7, 3600.4, {"loss": 0.234712345, "lr": 2e-05})["trainerStatus"]
    assert status["progressPercentage"] == 45 and status["estimatedRemainingSeconds"] == 3600
    assert status["metrics"] == [{"name": "loss", "value": "0.234712"}, {"name": "lr", "value": "2e-05"}]
    datetime.strptime(status["lastUpdatedTime"], "%Y-%m-%dT%H:%M:%SZ")  # RFC 3339, as metav1.Time parses it


@pytest.mark.parametrize("bad, words", [
    ({"progressPercentage": 101}, "101 is greater than the maximum of 100"),
    ({"metrics": [{"name": "loss", "value": ""}]}, "should be non-empty"),
    ({"progressPercentage": 5, "lastUpdatedTime": None}, "lastUpdatedTime"),
])
def test_the_schema_check_is_live(bad: dict[str, Any], words: str) -> None:
    status = {"lastUpdatedTime": "2026-12-04T10:00:00Z", **bad}
    if status["lastUpdatedTime"] is None:
        del status["lastUpdatedTime"]
    with pytest.raises(ManifestInvalid, match=words):
        jobs.validate(with_status(status))


# --------------------------------------------------------------------------------- a stand-in controller


class Controller:
    """An HTTPS server on 127.0.0.1 answering POSTs on the TrainJob's status path like the Trainer's status server:
    200 with the parsed body when the bearer token is one it issued (``rotate`` issues the next one into
    ``token_file``), a metav1.Status otherwise (``refuse``: always, with that code)."""

    def __init__(self, tmp: Path, refuse: int | None = None) -> None:
        self.token_file, self.received, self.refuse = tmp / "token", [], refuse
        self.tokens = {"token-1"}
        self.token_file.write_text("token-1\n")
        cert, key = tmp / "ca.crt", tmp / "tls.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                        "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        self.ca_file = cert
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                scheme, _, token = self.headers["Authorization"].partition(" ")
                ok = self.path == STATUS_PATH and scheme == "Bearer" and token in outer.tokens and not outer.refuse
                code = 200 if ok else (outer.refuse or 403)
                if ok:
                    outer.received.append((self.headers["Authorization"], body))
                answer = body if ok else {"kind": "Status", "status": "Failure", "message": "Forbidden", "code": code}
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}{STATUS_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def rotate(self, token: str) -> None:
        """A new token in place, atomically (the kubelet swaps projected volume contents the same way)."""
        self.tokens.add(token)
        new = self.token_file.with_name("token.new")
        new.write_text(token + "\n")
        os.replace(new, self.token_file)

    def env(self) -> dict[str, str]:
        return {progress.ENV_URL: self.url, progress.ENV_CA_CERT: str(self.ca_file),
                progress.ENV_TOKEN: str(self.token_file), "LOCAL_RANK": "0"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary for a test CA")


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    server = Controller(tmp_path)
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@needs_openssl
def test_the_reporter_posts_progress_to_the_controller_over_tls(controller: Controller) -> None:
    clock, warnings = Clock(), []
    reporter = progress.reporter_from_env(0, controller.env(), min_interval=5.0, clock=clock, warn=warnings.append)
    assert reporter.active
    for done in range(1, 11):  # 10 steps of 1 s each
        clock.now = float(done)
        reporter.update(done, 10, {"loss": 2.0 / done, "lr": 1e-3})
        if done == 4:
            controller.rotate("token-2")  # the projected token rotates: the reporter reads it per request
    reporter.close()
    assert warnings == [] and reporter.failed == 0
    bodies = [body["trainerStatus"] for _, body in controller.received]
    assert 2 <= len(bodies) <= 3  # steps 1, 6 (5 s later) and 10 (the last always); an unsent one is replaced
    assert [b["progressPercentage"] for b in bodies] == sorted(b["progressPercentage"] for b in bodies)
    assert bodies[-1]["progressPercentage"] == 100 and bodies[-1]["estimatedRemainingSeconds"] == 0
    assert bodies[-1]["metrics"] == [{"name": "loss", "value": "0.2"}, {"name": "lr", "value": "0.001"}]
    if len(bodies) == 3:
        assert bodies[0]["progressPercentage"] == 10 and bodies[0]["estimatedRemainingSeconds"] == 9
        assert bodies[1]["progressPercentage"] == 60 and bodies[1]["estimatedRemainingSeconds"] == 4
    assert controller.received[-1][0] == "Bearer token-2"
    for body in bodies:
        jobs.validate(with_status(body))


@needs_openssl
def test_a_resumed_stage_estimates_from_the_steps_it_trained(controller: Controller) -> None:
    clock = Clock()
    reporter = progress.reporter_from_env(90, controller.env(), clock=clock)
    clock.now = 20.0
    reporter.update(100, 200, {"loss": 1.0})  # 10 steps in 20 s: 100 steps left take ~200 s
    reporter.close()
    ((_, body),) = controller.received
    assert body["trainerStatus"]["progressPercentage"] == 50 and body["trainerStatus"]["estimatedRemainingSeconds"] == 200


@needs_openssl
def test_a_refusing_controller_costs_one_warning_and_reports_stop(tmp_path: Path) -> None:
    server = Controller(tmp_path, refuse=403)
    try:
        warnings: list[str] = []
        reporter = progress.reporter_from_env(0, server.env(), min_interval=0.0, warn=warnings.append)
        for done in range(1, 6):
            reporter.update(done, 5, {"loss": 1.0})
            reporter.close()  # wait for the sender each time, so every update had its chance
        assert len(warnings) == 1 and "\n" not in warnings[0], warnings
        assert "HTTP 403 Forbidden" in warnings[0] and "training continues" in warnings[0]
        assert reporter.failed == 1 and not reporter.active  # a refusal does not heal: no more requests
    finally:
        server.stop()


def test_an_unreachable_endpoint_costs_one_warning_and_training_goes_on(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    (tmp_path / "token").write_text("t")
    env = {progress.ENV_URL: f"http://127.0.0.1:{port}{STATUS_PATH}", progress.ENV_TOKEN: str(tmp_path / "token")}
    warnings: list[str] = []
    reporter = progress.reporter_from_env(0, env, min_interval=0.0, timeout=2.0, warn=warnings.append)
    for done in range(1, 4):
        reporter.update(done, 3, {"loss": 1.0})  # returns at once: the request is sent by the background thread
        reporter.close()
    assert len(warnings) == 1 and "not reported" in warnings[0] and "retrying quietly" in warnings[0], warnings
    assert reporter.failed == 3 and reporter.active  # a network failure may heal: later reports still try


@pytest.mark.parametrize("env", [
    {},                                                                     # a local run, Docker, or no feature gate
    {progress.ENV_URL: "https://c:8082/x", progress.ENV_TOKEN: "/t", "LOCAL_RANK": "1"},  # not the pod's local rank 0
    {progress.ENV_URL: "https://c:8082/x"},                                 # no token: nothing to authenticate with
    {progress.ENV_URL: "https://c:8082/x", progress.ENV_TOKEN: "/nonexistent/token", "LOCAL_RANK": "0"},  # a node pod:
])                                                                          # mpirun forwarded the env, no token mounted
def test_the_reporter_is_a_no_op_without_the_trainers_endpoint(env: dict[str, str]) -> None:
    reporter = progress.reporter_from_env(0, env)
    assert not reporter.active
    reporter.update(1, 2, {"loss": 1.0})
    reporter.close()
    assert reporter._thread is None


def test_mpi_local_rank_zero_of_the_pod_with_the_token_reports(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    env = {progress.ENV_URL: "https://c:8082/x", progress.ENV_TOKEN: str(tmp_path / "token")}
    assert progress.reporter_from_env(0, {**env, "OMPI_COMM_WORLD_LOCAL_RANK": "0"}).active
    assert not progress.reporter_from_env(0, {**env, "OMPI_COMM_WORLD_LOCAL_RANK": "3"}).active


# ------------------------------------------------------------------------------------------- follow's line


@pytest.mark.parametrize("status, line", [
    ({"progressPercentage": 45, "estimatedRemainingSeconds": 3725, "lastUpdatedTime": "2026-12-04T10:00:00Z",
      "metrics": [{"name": "loss", "value": "0.2347"}]}, "45%, about 1h 02m left, loss 0.2347"),
    ({"progressPercentage": 3, "estimatedRemainingSeconds": 200000, "lastUpdatedTime": "t"}, "3%, about 2d 7h left"),
    ({"estimatedRemainingSeconds": 75, "lastUpdatedTime": "t"}, "about 1m 15s left"),
    ({"lastUpdatedTime": "t"}, None),
    (None, None),
])
def test_progress_line(status: dict[str, Any] | None, line: str | None) -> None:
    obj = {"status": {"trainerStatus": status} if status is not None else {}}
    assert progress.progress_line(obj) == line


@needs_openssl
@pytest.mark.integration
def test_real_training_ranks_report_their_progress_to_the_controller(controller: Controller, prepared,
                                                                   tmp_path: Path) -> None:
    """`tuna train` of the smoke stage 1 on 2 DeepSpeed ranks with the Trainer's endpoint in the environment: local
    rank 0 reports, the last report is 100% with the stage's final loss."""
    import sys

    data = tmp_path / "data"
    shutil.copytree(prepared.cfg.data_dir, data, ignore=shutil.ignore_patterns("train"))
    env = {**os.environ, **controller.env()}
    env.pop("LOCAL_RANK")  # the launcher sets each rank's own
    done = subprocess.run([sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "1",
                           "--variant", "baseline", f"run.data_dir={data}"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((data / "train" / "baseline" / "stage1" / "metrics.json").read_text())
    bodies = [body["trainerStatus"] for _, body in controller.received]
    assert bodies and bodies[-1]["progressPercentage"] == 100 and bodies[-1]["estimatedRemainingSeconds"] == 0
    assert {m["name"]: float(m["value"]) for m in bodies[-1]["metrics"]}["loss"] == pytest.approx(metrics["final_loss"],
                                                                                                   rel=1e-5)
    assert "TrainJob progress not reported" not in done.stdout + done.stderr
    for body in bodies:
        jobs.validate(with_status(body))
