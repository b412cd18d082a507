"""Atomic writes: an interrupted write leaves the old file or folder whole."""

from __future__ import annotations

import pytest

from fsllm import atomic


def test_interrupted_file_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic.write_text(path, '{"f1": 0.5}')
    with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
        tmp.write_text('{"f1": 0.')  # half written, then the writer dies
        raise RuntimeError("killed")
    assert path.read_text() == '{"f1": 0.5}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left behind
    atomic.write_lines(path, ["a", "b"])
    assert path.read_text() == "a\nb\n"


def test_interrupted_folder_write_keeps_the_old_folder(tmp_path):
    model = tmp_path / "model"
    with atomic.replacing_dir(model) as tmp:
        (tmp / "config.json").write_text("old")
    with pytest.raises(RuntimeError), atomic.replacing_dir(model) as tmp:
        (tmp / "config.json").write_text("new")
        raise RuntimeError("killed")
    assert (model / "config.json").read_text() == "old"
    with atomic.replacing_dir(model) as tmp:
        (tmp / "config.json").write_text("new")
    assert (model / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
