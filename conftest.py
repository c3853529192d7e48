"""Test runs write nothing into the checkout: figures and claim records of the notebooks that nbval
executes go to a temporary folder (the kernels inherit this environment). Under pytest-xdist the
notebooks are queued longest first, as ``make reproduce`` queues them. Where the notebooks would run in
an emulated precision (:func:`notebooks_skip_reason`) they are skipped, saying why."""
import os
import tempfile

import pytest

from fslib.report import committed_seconds
from fslib.training import native_bf16

_scratch = tempfile.mkdtemp(prefix="fslib-test-")
os.environ.setdefault("FSLIB_FIGURES", os.path.join(_scratch, "figures"))
os.environ.setdefault("FSLIB_RUNS", os.path.join(_scratch, "runs"))


def notebooks_skip_reason() -> str | None:
    """Why the notebooks' committed outputs cannot be reproduced here in reasonable time, or None.

    They are bf16 runs, and ``make test`` runs the notebooks in bf16 (``FSLIB_PRECISION=bf16``). A CPU without
    AVX512-BF16 or AMX emulates bf16: on an AVX2-only 2-core AMD EPYC the tiny CLIP's image tower (batch 32, one
    thread) encodes 12 images/s in bf16 against 75 in fp32 and trains at 3 against 25, so the seven notebooks
    would take many hours, and in fp32 they would not print the committed verdict words at every margin.
    ``FSLIB_NOTEBOOK_TESTS=always`` runs them all the same."""
    if os.environ.get("FSLIB_NOTEBOOK_TESTS") == "always":
        return None
    if os.environ.get("FSLIB_PRECISION") == "bf16" and not native_bf16("cpu"):
        return ("the committed outputs are bf16 runs and this CPU has no native bf16 (no AVX512-BF16 or AMX): emulated, "
                "the notebooks would take hours; FSLIB_NOTEBOOK_TESTS=always runs them anyway")
    return None


def pytest_configure(config):
    config.notebooks_skip_reason = notebooks_skip_reason()  # before any fixture sets FSLIB_PRECISION for unit tests


@pytest.fixture(scope="session")
def notebooks_compared(pytestconfig) -> bool:
    """Whether this run executes the notebooks in full under nbval, their verdict cells compared."""
    return pytestconfig.notebooks_skip_reason is None


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test`` runs ``-n <cores> --dist loadfile --no-loadscope-reorder``) each notebook
    is one unit of work, its cells run in order in one kernel on one worker; the units are queued longest first
    by committed wall time (:func:`fslib.report.committed_seconds`), as ``make reproduce`` queues them, and the
    unit tests fill in last, as workers free up."""
    reason = config.notebooks_skip_reason
    if reason:
        for item in items:
            if item.path.suffix == ".ipynb":
                item.add_marker(pytest.mark.skip(reason=reason))
    if not hasattr(config, "workerinput"):
        return
    notebooks = sorted({item.path for item in items if item.path.suffix == ".ipynb"}, key=committed_seconds, reverse=True)
    rank = {notebook: i for i, notebook in enumerate(notebooks)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))  # stable: cells and unit tests keep their order
