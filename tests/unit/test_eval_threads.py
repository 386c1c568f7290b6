"""The server's evaluation runs on ``eval.eval_threads`` torch threads and restores the setting."""

from __future__ import annotations

import os

import pytest
import torch

from smartfed.config import EvalConfig, RunConfig
from smartfed.errors import ConfigError
from smartfed.fed.driver import cpu_threads


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_block_runs_with_the_asked_threads_and_restores(one_thread) -> None:
    with cpu_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1


def test_zero_means_every_core_of_the_process(one_thread) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with cpu_threads(0):
        assert torch.get_num_threads() == cores
    assert torch.get_num_threads() == 1


def test_restored_after_an_error(one_thread) -> None:
    with pytest.raises(RuntimeError), cpu_threads(2):
        raise RuntimeError("eval failed")
    assert torch.get_num_threads() == 1


def test_negative_threads_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="eval_threads"):
        EvalConfig(eval_threads=-1)
    assert RunConfig.from_flat({"eval_threads": 3}).eval.eval_threads == 3
