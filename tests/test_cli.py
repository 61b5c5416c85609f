"""The `tuna` command: --help on every verb, one-line errors with exit code 2, `tuna world` up-to-date logic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, SMOKE
from tuna.cli import VERBS, build_parser, main


def flat(text: str) -> str:
    """Whitespace-normalised text (argparse re-wraps help strings to the terminal width)."""
    return " ".join(text.split())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m tuna.cli ARGS` in a fresh interpreter, from the repository root."""
    return subprocess.run([sys.executable, "-m", "tuna.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def leftovers(root: Path) -> list[Path]:
    """Temporary or backup world folders left behind anywhere under ``root``."""
    return sorted(p for pattern in (".world.tmp-*", ".world.old-*") for p in root.rglob(pattern))


# ------------------------------------------------------------------------------------------- --help


def test_top_level_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tuna")
    for name, verb in VERBS.items():
        assert name in out
        assert flat(verb.help) in flat(out)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tuna {verb}")
    assert flat(VERBS[verb].help) in flat(out)
    assert "--config FILE" in out and "KEY=VALUE" in out


def test_every_verb_is_real() -> None:
    """No placeholder verbs: each one dispatches to a callable."""
    assert VERBS, "the dispatch table is empty"
    parser = build_parser()
    for name, verb in VERBS.items():
        assert callable(verb.run), name
        required = {"ask": ["What is in the image?", "--image", "x.png"]}.get(name, [])
        assert parser.parse_args([name, *required]).func is verb.run


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("tuna ")


def test_no_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: tuna" in capsys.readouterr().err


def test_help_in_a_fresh_process() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: tuna" in proc.stdout and "world" in proc.stdout
    proc = run_cli("world", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: tuna world" in proc.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "tuna"
    assert script.is_file(), f"console script missing next to {sys.executable}"
    proc = subprocess.run([str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: tuna" in proc.stdout


# ------------------------------------------------------------------------------------- bad input


def assert_one_line_error(err: str, verb: str = "world") -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith(f"tuna {verb}: error: "), lines[0]
    return lines[0]


def test_bad_config_key_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["world", "--config", str(SMOKE), f"run.data_dir={tmp_path}", "world.sizes.webb=5"])
    assert code == 2
    captured = capsys.readouterr()
    line = assert_one_line_error(captured.err)
    assert "'world.sizes.webb'" in line and "web_b" in line
    assert not (tmp_path / "world").exists()


def test_bad_config_key_in_a_fresh_process(tmp_path: Path) -> None:
    proc = run_cli("world", "--config", str(SMOKE), f"run.data_dir={tmp_path}", "world.bogus=1")
    assert proc.returncode == 2
    line = assert_one_line_error(proc.stderr)
    assert "'world.bogus'" in line
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override, key",
    [
        ("world.sizes.web=0", "world.sizes.web"),
        ("world.taxonomy.ood_fraction=1.0", "world.taxonomy.ood_fraction"),
        ("world.image_format=gif", "world.image_format"),
        ("world.workers=many", "world.workers"),
        ("world.sizes.web", "world.sizes.web"),  # an override without '='
    ],
)
def test_bad_values_exit_2(override: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["world", "--config", str(SMOKE), f"run.data_dir={tmp_path}", override]) == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert key in line
    assert list(tmp_path.iterdir()) == []


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["world", "--config", str(tmp_path / "nope.yaml")]) == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert "nope.yaml" in line


def test_unwritable_data_dir_exits_2_and_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    code = main(["world", "--config", str(SMOKE), "--quiet", f"run.data_dir={blocker / 'data'}"])
    assert code == 2
    line = assert_one_line_error(capsys.readouterr().err)
    assert "run.data_dir" in line and str(blocker) in line
    assert blocker.read_text() == "not a folder\n"
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_unwritable_data_dir_in_a_fresh_process(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = run_cli("world", "--config", str(SMOKE), "--quiet", f"run.data_dir={blocker}/deeper/data")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- tuna world


def test_world_writes_then_is_up_to_date_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["world", "--config", str(SMOKE), "--quiet", f"run.data_dir={tmp_path}"]
    root = tmp_path / "world"

    assert main(args) == 0
    out = capsys.readouterr().out
    manifest = json.loads((root / "manifest.json").read_text())
    assert "web_A" in out and "up to date" not in out
    assert (root / "taxonomy.json").is_file() and (root / "web" / "A").is_dir()
    assert leftovers(tmp_path) == []

    # A file the generator never writes tells whether the folder was regenerated.
    sentinel = root / "sentinel.txt"
    sentinel.write_text("still here")

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "up to date" in out
    assert sentinel.read_text() == "still here"
    assert json.loads((root / "manifest.json").read_text()) == manifest

    assert main([*args, "--force"]) == 0
    out = capsys.readouterr().out
    assert "up to date" not in out
    assert not sentinel.exists(), "--force must regenerate the world folder"
    assert json.loads((root / "manifest.json").read_text())["digests"] == manifest["digests"]
    assert leftovers(tmp_path) == []

    # Another world config (here: the seed) is not up to date either.
    sentinel.write_text("still here")
    assert main([*args, "run.seed=1"]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert not sentinel.exists()
    assert json.loads((root / "manifest.json").read_text())["seed"] == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("argv, expected", [
    (["export", "--format", "hf", "--trtllm"], "--trtllm writes a Triton repository; it does not go with --format hf"),
    (["export", "--trtllm", "serve.trtllm_dtype=fp32"], "serve.trtllm_dtype: must be bf16 or fp16"),
])
def test_export_flag_and_recipe_combinations_that_cannot_work_fail_in_one_line(
        argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*argv, "--config", str(SMOKE), f"run.data_dir={tmp_path}"])
    assert code != 0
    assert expected in assert_one_line_error(capsys.readouterr().err, "export")
