import pytest
import torch

from workbench.model import make_checkpoint


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (runs on the device, skipped in CI)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on the device (see README, contributors)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "tiny", seed=1, model_type="llama",
                           max_shard_bytes=300_000)
