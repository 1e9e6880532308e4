"""Test-wide settings: 2 threads (2-core CI), nnU-Net paths in temp dirs, deterministic seeds."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The synthetic dataset, planned and preprocessed once per test session by the stock CLI."""
    from tests.nnunet_cli import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture
def fresh_dynamo(monkeypatch):
    """torch.compile tests: automatic back-end choice and no compiled graphs from an earlier test."""
    from nnunet_ext.ops import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
