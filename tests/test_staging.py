"""tuna.staging: outputs appear whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuna.staging import staged_dir, staged_file


def test_staged_file_replaces_the_target_on_success_and_leaves_it_on_error(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.json"
    with staged_file(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError), staged_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_staged_dir_publishes_a_whole_folder_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "step"
    with staged_dir(target, "step output") as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(ValueError), staged_dir(target, "step output") as tmp:
        (tmp / "b").write_text("2")
        raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step"] and sorted(p.name for p in target.iterdir()) == ["a"]
