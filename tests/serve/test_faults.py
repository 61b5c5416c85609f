"""A dead step of the served ensemble: ``kill -9`` of a python-backend stub of a real tritonserver under load.

What tritonserver 2.51 does by itself (measured; the reason for :mod:`tuna.serve.probe` and the watchdog): every
request reaching the dead step fails with INTERNAL "in ensemble 'tuna', Stub process '<step>_0_0' is not healthy.",
the stub is never restarted, and ``/v2/health/ready`` keeps answering 200. Our client maps that INTERNAL to
UNAVAILABLE; the watchdog's real-inference probe sees it and restarts the server; answers return equal to before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from support import REPO, SMOKE, World
from tuna.serve.client import RequestRefused, ServerUnreachable, TunaClient, refusal
from tuna.serve.probe import probe, probe_image
from tuna.serve.server import ServerError, TritonServer, free_port
from tuna.serve.watchdog import Watchdog, stub_pids

QUIET = lambda s: None  # noqa: E731
QUESTION = "What is in the image?"
CLIENTS = 8
DETECT_S = 15      # a dead step is seen by the probe within this many seconds (period 1 s, 2 failures in a row)
RECOVER_S = 90     # answers are back (server restarted and ready) within this many seconds of the kill


def _image(world: World, n: int = 0) -> bytes:
    return sorted((world.cfg.data_dir / "world" / "eval" / "finer" / "ood" / "images").glob("*.png"))[n].read_bytes()


def _kill(server: TritonServer, step: str) -> float:
    """SIGKILL ``server``'s own stub of ``step`` (never another server's); returns the monotonic time of the kill."""
    (pid,) = [p for p, name in stub_pids(server).items() if name.rsplit("_", 2)[0] == step]
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


MESSAGES: dict[str, str] = {}   # outcome -> the first message seen with it (for the report)


def _chart_probe(url: str) -> subprocess.CompletedProcess:
    """Run the helm chart's rendered readiness command (exec probe) against ``url`` instead of the pod's 127.0.0.1:8001,
    with this interpreter as its ``python``."""
    import yaml

    from tuna.kube.binaries import helm_binary, run_tool

    out = run_tool(helm_binary(), ["template", "t", str(REPO / "helm" / "tuna-serving")], what="render tuna-serving")
    (deployment,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    (triton,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    command = triton["readinessProbe"]["exec"]["command"]
    assert command[0] == "python" and "127.0.0.1:8001" in command and triton["livenessProbe"]["exec"]["command"] == command
    command = [sys.executable, *[url if a == "127.0.0.1:8001" else a for a in command[1:]]]
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def _outcome(client: TunaClient, image: bytes, expected: str) -> str:
    try:
        return "OK" if client.ask(image, QUESTION, max_tokens=8).text == expected else "WRONG ANSWER"
    except RequestRefused as err:
        outcome, message = (err.status if err.status == err.triton_status else f"{err.status} (Triton: {err.triton_status})"), err.message
    except ServerUnreachable as err:
        outcome, message = "UNAVAILABLE (transport)", str(err)
    MESSAGES.setdefault(outcome, message[:200])
    return outcome


@pytest.fixture(scope="module")
def repository(trained: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuna.serve.export import export_repository

    out = tmp_path_factory.mktemp("faults") / "tuna"
    export_repository(trained.cfg, "tuna", out=out, log=QUIET)
    return out / "model_repository"


# ------------------------------------------------------------------------------------------ no server


def test_a_dead_step_maps_to_unavailable_keeping_tritons_status() -> None:
    err = refusal("INTERNAL", "in ensemble 'tuna', Stub process 'tensorrt_llm_0_0' is not healthy.")
    assert err.status == "UNAVAILABLE" and err.triton_status == "INTERNAL"
    assert "'tensorrt_llm' step died" in err.message and "\n" not in str(err)
    other = refusal("INTERNAL", "internal error: ValueError: boom")
    assert other.status == other.triton_status == "INTERNAL"
    assert refusal("INVALID_ARGUMENT", "max_tokens: 0 is outside 1..256").status == "INVALID_ARGUMENT"


def test_a_model_being_unloaded_or_loaded_is_unavailable_and_an_unknown_name_stays_not_found() -> None:
    """Triton's messages around a restart (the first measured under 8 clients while the watchdog restarted a server)."""
    for message in ("Request for unknown model: 'tuna' has no available versions",
                    "Request for unknown model: 'tuna' version 1 is not at ready state"):
        err = refusal("NOT_FOUND", message)
        assert (err.status, err.triton_status) == ("UNAVAILABLE", "NOT_FOUND"), message
        assert "loading or unloading 'tuna'" in err.message and "retry" in err.message
    unknown = refusal("NOT_FOUND", "Request for unknown model: 'tunaa' is not found")
    assert unknown.status == unknown.triton_status == "NOT_FOUND"


def test_the_probe_image_is_a_png_and_a_missing_server_is_unavailable_at_once() -> None:
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(probe_image()))
    img.load()
    assert img.size == (16, 16) and img.mode == "RGB"
    t0 = time.monotonic()
    result = probe(f"127.0.0.1:{free_port()}", deadline=5)
    assert not result.ok and result.status == "UNAVAILABLE" and time.monotonic() - t0 < 5
    assert result.line("x").startswith("unhealthy: x: UNAVAILABLE: no Triton server answers")


def test_watchdog_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="on_failure must be one of restart, exit, got 'reboot'"):
        Watchdog(TritonServer(tmp_path), on_failure="reboot")
    with pytest.raises(ServerError, match="serve.probe_period"):
        Watchdog(TritonServer(tmp_path), period=0)


def test_a_restarted_server_is_judged_after_its_first_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The watchdog's startup rule, around a scripted probe (the real server's case is the integration test below):
    failures of a restarted server before its first answer don't count; after it, two in a row do."""
    from tuna.serve import watchdog as wd
    from tuna.serve.probe import ProbeResult

    verdicts = iter([False, False, False, True, False, False])
    stop = threading.Event()

    def scripted(url: str, deadline: float) -> ProbeResult:
        ok = next(verdicts, None)
        if ok is None:
            stop.set()
            return ProbeResult(True, 0.0, "OK", "")
        return ProbeResult(ok, 0.0, "OK" if ok else "UNAVAILABLE", "" if ok else "Connection reset by peer")

    monkeypatch.setattr(wd, "probe", scripted)
    lines: list[str] = []
    dog = Watchdog(TritonServer(tmp_path), period=0.01, failures=2, on_failure="exit", log=lines.append)
    dog.warming_until = time.monotonic() + 60          # as right after a restart
    with pytest.raises(ServerError, match=r"the server is broken \(UNAVAILABLE: Connection reset by peer\); serve.on_failure is exit"):
        dog.run(stop)
    assert [line.split(":")[1].strip() for line in lines] == ["the restarted server has not answered yet"] * 3 + ["probe 1/2 failed", "probe 2/2 failed"]
    assert dog.warming_until == 0.0 and [e.kind for e in dog.events] == ["unhealthy", "gave_up"]


# ------------------------------------------------------------------------------------------ the real server


@pytest.mark.integration
def test_a_killed_llm_step_under_8_clients_is_unavailable_then_the_server_restarts(repository: Path, trained: World,
                                                                                   tmp_path: Path) -> None:
    """The issue's scenario, scripted: 8 clients, ``kill -9`` of the LLM step's stub mid-load, outcomes by status."""
    image = _image(trained)
    with TritonServer(repository, log_path=tmp_path / "triton.log").start(180) as server:
        expected = TunaClient(server.grpc_url).ask(image, QUESTION, max_tokens=8).text
        watchdog = Watchdog(server, period=1, deadline=5, failures=2, kill_grace=2, log=QUIET)
        stop_watch, stop_load = threading.Event(), threading.Event()
        watcher = threading.Thread(target=watchdog.run, args=(stop_watch,))
        watcher.start()
        log: list[tuple[float, float, str]] = []

        def load() -> None:
            client = TunaClient(server.grpc_url, timeout=30)
            while not stop_load.is_set():
                t0 = time.monotonic()
                outcome = _outcome(client, image, expected)
                log.append((t0, time.monotonic(), outcome))
                if outcome != "OK":
                    time.sleep(0.5)   # a client backing off a failing server
            client.close()

        threads = [threading.Thread(target=load) for _ in range(CLIENTS)]
        try:
            for t in threads:
                t.start()
            time.sleep(3)
            first_regions = list(watchdog.regions)
            killed = _kill(server, "tensorrt_llm")
            time.sleep(1.5)
            triton_ready_after_kill = server.ready()          # Triton's own readiness, before the watchdog acts
            deadline = killed + RECOVER_S
            while not (watchdog.restarts and [x for x in log if x[0] > watchdog.events[-1].at and x[2] == "OK"]):
                assert time.monotonic() < deadline, f"no answer {RECOVER_S}s after the kill: {watchdog.events}"
                assert watcher.is_alive(), f"the watchdog stopped: {watchdog.events}"
                time.sleep(0.2)
            time.sleep(3)                                     # some load on the restarted server
        finally:
            stop_load.set()
            for t in threads:
                t.join(60)
            stop_watch.set()
            watcher.join(60)
        assert not any(t.is_alive() for t in threads), "a client hangs"
        detected = next(e.at for e in watchdog.events if e.kind == "unhealthy") - killed
        restarted = next(e.at for e in watchdog.events if e.kind == "restarted")
        first_ok = min(end for start, end, o in log if start > killed and o == "OK") - killed
        after = Counter(o for start, end, o in log if start > restarted)
        settled = max(end for start, end, o in log if o != "OK") - killed   # the last failure
        around = Counter(o for start, end, o in log if end > killed and start < restarted)
        numbers = {"before_kill": dict(Counter(o for start, end, o in log if end <= killed)), "kill_to_restart": dict(around),
                   "after_restart": dict(after), "detected_s": round(detected, 2), "restarted_s": round(restarted - killed, 2),
                   "first_answer_s": round(first_ok, 2), "last_failure_s": round(settled, 2), "longest_request_s": round(max(e - s for s, e, _ in log), 2),
                   "triton_ready_after_kill": triton_ready_after_kill, "messages": MESSAGES,
                   "events": [(e.kind, round(e.at - killed, 2), e.detail[:160]) for e in watchdog.events]}
        print("\nfault numbers:", json.dumps(numbers))
        (tmp_path / "fault.json").write_text(json.dumps(numbers, indent=1))
        failures = {o for o in around if o != "OK"}
        assert failures and failures <= {"UNAVAILABLE (Triton: INTERNAL)", "UNAVAILABLE", "UNAVAILABLE (transport)",
                                      "UNAVAILABLE (Triton: NOT_FOUND)"}, numbers
        assert triton_ready_after_kill, "Triton 2.51 reported not ready by itself: the probe may no longer be needed"
        assert detected < DETECT_S and first_ok < RECOVER_S and watchdog.restarts == 1, numbers
        # After the restart: answers equal to before; a client may first see its reconnect fail (transport), briefly.
        assert set(after) <= {"OK", "UNAVAILABLE (transport)"} and settled < RECOVER_S, numbers
        assert len([1 for start, end, o in log if start > killed + settled and o == "OK"]) >= CLIENTS, numbers
        assert numbers["longest_request_s"] < 30, numbers                  # nothing waited for the client's timeout
        assert probe(server.grpc_url).ok and stub_pids(server)
        assert not any(Path("/dev/shm", r).exists() for r in first_regions), "the killed server's shared memory is left"


@pytest.mark.integration
def test_every_other_step_dying_is_recovered_and_on_failure_exit_stops_the_server(repository: Path, trained: World,
                                                                                 tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """preprocessing, retrieval, postprocessing killed in turn: UNAVAILABLE, restarted, the same answer. Then, the LLM
    step killed with no watchdog: the helm chart's rendered probe command exits 1 while Triton's readiness stays 200,
    `tuna ask` and `tuna probe` fail in one line, and a watchdog with on_failure=exit stops the server."""
    from tuna.cli import main

    image = _image(trained, 1)
    with TritonServer(repository, log_path=tmp_path / "triton.log").start(180) as server:
        client = TunaClient(server.grpc_url, timeout=30)
        expected = client.ask(image, QUESTION, max_tokens=8).text
        for n, step in enumerate(("preprocessing", "retrieval", "postprocessing"), start=1):
            watchdog = Watchdog(server, period=1, deadline=5, failures=2, kill_grace=2, log=QUIET)
            stop = threading.Event()
            watcher = threading.Thread(target=watchdog.run, args=(stop,))
            watcher.start()
            try:
                killed = _kill(server, step)
                time.sleep(0.5)
                assert _outcome(client, image, expected) in ("UNAVAILABLE (Triton: INTERNAL)", "UNAVAILABLE (transport)"), step
                while watchdog.restarts == 0:
                    assert time.monotonic() - killed < RECOVER_S and watcher.is_alive(), (step, watchdog.events)
                    time.sleep(0.2)
            finally:
                stop.set()
                watcher.join(60)
            assert _outcome(client, image, expected) == "OK", step
            assert len(list(tmp_path.glob("triton.before-restart-*.log"))) == n   # each broken server's log is kept

        healthy = _chart_probe(server.grpc_url)
        assert healthy.returncode == 0 and healthy.stdout.startswith("healthy:"), healthy.stderr
        _kill(server, "tensorrt_llm")
        dead = _chart_probe(server.grpc_url)                   # what the kubelet's readiness and liveness probes see
        assert dead.returncode == 1 and dead.stderr.count("\n") == 1, dead.stderr
        assert "unhealthy" in dead.stderr and "Stub process 'tensorrt_llm_0_0' is not healthy" in dead.stderr
        assert server.ready()                                  # while Triton's own readiness says 200
        img = tmp_path / "q.png"
        img.write_bytes(image)
        assert main(["ask", QUESTION, "--image", str(img), "--config", str(SMOKE), "--url", server.grpc_url]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "UNAVAILABLE: in ensemble 'tuna', Stub process 'tensorrt_llm_0_0' is not healthy" in err
        assert main(["probe", "--url", server.grpc_url, "--deadline", "5"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"unhealthy: {server.grpc_url}: UNAVAILABLE")
        exiting = Watchdog(server, period=1, deadline=5, failures=2, on_failure="exit", kill_grace=2, log=QUIET)
        t0, give_up = time.monotonic(), threading.Event()
        timer = threading.Timer(RECOVER_S, give_up.set)   # run() returning instead of raising fails the test, never hangs it
        timer.start()
        with pytest.raises(ServerError, match=r"the server is broken \(UNAVAILABLE: .*on_failure is exit: exiting for the orchestrator"):
            exiting.run(give_up)
        timer.cancel()
        assert time.monotonic() - t0 < DETECT_S and server.process.poll() is not None and not stub_pids(server)
        assert not [r for r in exiting.regions if Path("/dev/shm", r).exists()]   # no shared memory left behind
        client.close()
