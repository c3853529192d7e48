import numpy as np
import pytest
import torch

from fslib import features
from fslib.data import ImageDataset
from fslib.models import EMBEDDED_MODEL, load_clip


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Every test gets its own feature cache, runs/ and figures/ folders."""
    monkeypatch.setenv("FSLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FSLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FSLIB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setattr(features, "_MEMORY", features.memory_cache())


@pytest.fixture(autouse=True, scope="session")
def fp32_unless_asked():
    """Unit tests run in fp32 whatever the CPU and ``$FSLIB_PRECISION`` (``make test`` sets it for the
    notebooks), so their tolerances do not depend on bf16; set in the environment before any fixture, so
    module-wide fixtures and the processes a test starts (torchrun's ranks) run in fp32 too. The tests of
    reduced precision ask for it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FSLIB_PRECISION", "fp32")
        yield


@pytest.fixture
def one_and_two_processes(monkeypatch):
    """``run(fn)``: ``fn()`` with ``$FSLIB_PROCESSES`` 1 and then 2, this process on one thread like the workers,
    as ``{"1": result, "2": result}``: what a driver's fan-out over processes (fslib.parallel) must leave unchanged."""
    def run(fn):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results = {}
            for processes in ("1", "2"):
                monkeypatch.setenv("FSLIB_PROCESSES", processes)
                results[processes] = fn()
            return results
        finally:
            torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="session")
def random_clip():
    """The tiny architecture with random weights: fast, and independent of the shipped checkpoint."""
    return load_clip(EMBEDDED_MODEL, "none")


def make_dataset(n_classes: int = 4, per_class: int = 6, seed: int = 0, name: str = "toy") -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = rng.integers(0, 256, size=(len(labels), 64, 64, 3), dtype=np.uint8)
    return ImageDataset(name, "train", [f"class{c}" for c in range(n_classes)], labels, images, ["a photo of a {}."])
