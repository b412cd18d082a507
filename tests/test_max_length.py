"""A model folder records the tokens per input it was trained at (``FSLLMConfig.max_length``), and
``Predictor`` (so ``fsllm eval / predict / serve``) reads inputs at that length: a folder without it
read 256 tokens after training and dev selection at ``TrainConfig.max_length`` (128 by default)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import write_csv_dir

from fsllm.inference import DEFAULT_MAX_LENGTH, Predictor


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_model_dir):
    from fsllm.training import train

    tmp = tmp_path_factory.mktemp("max-length")
    return train(data=str(write_csv_dir(tmp)), model=str(tiny_model_dir), output_dir=str(tmp / "run"), max_steps=1,
                 batch_size=4, max_length=5, evaluate_test=False)


def test_a_trained_folder_records_max_length_and_the_predictor_reads_at_it(short_run, tmp_path):
    assert json.loads((short_run.model_dir / "config.json").read_text())["max_length"] == 5
    published = tmp_path / "published"  # the model folder alone, out of its run folder (as on the Hub)
    shutil.copytree(short_run.model_dir, published)
    pred = Predictor.from_pretrained(published)
    assert pred.max_length == 5
    assert Predictor.from_pretrained(short_run.run_dir).max_length == 5
    # what it means: a text is read as its first 5 tokens (the word tokenizer adds no special tokens)
    words = "a great moving film but boring plot and awful actors".split()
    assert pred.predict([" ".join(words)]) == pred.predict([" ".join(words[:5])])
    # an explicit length still wins
    assert Predictor.from_pretrained(published, max_length=9).max_length == 9


def test_a_folder_without_max_length_keeps_the_old_default(tiny_seq_model_dir):
    """Folders written before the field (here: saved by from_backbone, outside training) read 256 tokens."""
    assert json.loads((tiny_seq_model_dir / "config.json").read_text()).get("max_length") is None
    assert Predictor.from_pretrained(tiny_seq_model_dir).max_length == DEFAULT_MAX_LENGTH == 256


def test_max_length_must_be_a_positive_integer():
    from fsllm.config import FSLLMConfig

    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        FSLLMConfig(max_length=0)
