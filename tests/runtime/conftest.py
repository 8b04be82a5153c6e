"""Fixtures for the FrozenRuntime tests (tiny built-in model, one thread: the CPUs are shared)."""

from __future__ import annotations

import pytest
import torch

from tests.runtime.helpers import train_tiny_adapter

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir():
    from floe.server.models.builtin import prepare

    return prepare("floe-tiny-chat")


@pytest.fixture(scope="session")
def llm(tiny_dir):
    from floe.server.runtime.model import FrozenModel

    return FrozenModel(tiny_dir)


@pytest.fixture(scope="session")
def ts_adapter(llm, tmp_path_factory):
    return train_tiny_adapter(llm, tmp_path_factory.mktemp("ts") / "tiny-ts")
