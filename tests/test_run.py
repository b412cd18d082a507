"""The run folder module: the layout's names, the saved TrainConfig and its format version."""

from __future__ import annotations

import json

import pytest

from fsllm.config import TrainConfig
from fsllm.errors import FSLLMError
from fsllm.modeling import HEAD_NAME
from fsllm.run import RUN_FORMAT, RUN_FORMAT_KEY, RunFolder, checkpoint_step, last_complete_checkpoint


def test_config_round_trips_with_its_format_version(tmp_path):
    folder = RunFolder(tmp_path)
    cfg = TrainConfig(data="rt-polarity", epochs=2.0, output_dir=str(tmp_path))
    folder.save_config(cfg)
    saved = json.loads(folder.config_path.read_text())
    assert saved[RUN_FORMAT_KEY] == RUN_FORMAT
    assert folder.load_config() == cfg


def test_a_folder_without_a_format_version_is_format_1(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_length": 300}))
    assert RunFolder(tmp_path).load_config().max_length == 300


@pytest.mark.parametrize("version", [RUN_FORMAT + 1, "2", None, 0])
def test_a_newer_or_unknown_format_is_one_clear_error_naming_the_folder(tmp_path, version):
    (tmp_path / "config.json").write_text(json.dumps({RUN_FORMAT_KEY: version, "max_length": 300}))
    with pytest.raises(FSLLMError) as e:
        RunFolder(tmp_path).load_config()
    msg = str(e.value)
    assert str(tmp_path) in msg and "format" in msg and "\n" not in msg


def test_last_complete_checkpoint_skips_half_written_ones(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False), (10, True)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / HEAD_NAME).write_bytes(b"")
        if complete and step != 10:
            (d / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert checkpoint_step(tmp_path / "checkpoint-4") == 4 and checkpoint_step(tmp_path / "checkpoint-x") is None
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_resume_drops_a_partial_last_log_line_and_keeps_the_records_up_to_the_checkpoint(tmp_path):
    """A run killed while appending to train_log.jsonl leaves half a JSON record at the end; resuming
    drops it (with the records after the checkpoint) instead of failing on it."""
    folder = RunFolder(tmp_path)
    records = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    folder.log_path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo')
    folder.truncate_log(3)
    assert [json.loads(ln) for ln in folder.log_path.read_text().splitlines()] == records[:3]


def test_a_log_damaged_before_its_last_line_is_one_clear_error(tmp_path):
    folder = RunFolder(tmp_path)
    folder.log_path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(FSLLMError, match="line 2 is not a JSON record"):
        folder.truncate_log(2)
