"""``OMP_NUM_THREADS`` means the same for every entry point: torch would take ``MKL_NUM_THREADS`` over it."""

import pytest
import torch

from fsllm.cli import main
from fsllm.threads import apply_omp_threads, omp_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("value", "expected"), [("2", 2), (" 3 ", 3), ("", None), ("0", None), ("two", None), ("-1", None)])
def test_omp_threads_reads_a_positive_number(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert omp_threads() == expected


def test_omp_threads_unset_leaves_torch_its_choice(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(1)
    assert omp_threads() is None
    assert apply_omp_threads() == 1


def test_apply_omp_threads_wins_over_mkl(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert apply_omp_threads() == 2
    assert torch.get_num_threads() == 2


def test_every_cli_command_runs_on_the_openmp_threads(monkeypatch, restore_threads, capsys):
    """The command line applies it before any command (serve decides per worker: tests/test_serve.py)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # main sets it: restored after the test
    torch.set_num_threads(1)
    assert main(["models"]) == 0
    assert torch.get_num_threads() == 2
    assert "SmolLM2" in capsys.readouterr().out
