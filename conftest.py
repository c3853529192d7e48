"""Test runs write nothing into the checkout: figures and claim records of the notebooks that nbval
executes go to a temporary folder (the kernels inherit this environment). Under pytest-xdist the
notebooks are queued longest first, as ``make reproduce`` queues them."""
import os
import tempfile

from fslib.report import committed_seconds

_scratch = tempfile.mkdtemp(prefix="fslib-test-")
os.environ.setdefault("FSLIB_FIGURES", os.path.join(_scratch, "figures"))
os.environ.setdefault("FSLIB_RUNS", os.path.join(_scratch, "runs"))


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test`` runs ``-n <cores> --dist loadfile --no-loadscope-reorder``) each notebook
    is one unit of work, its cells run in order in one kernel on one worker; the units are queued longest first
    by committed wall time (:func:`fslib.report.committed_seconds`), as ``make reproduce`` queues them, and the
    unit tests fill in last, as workers free up."""
    if not hasattr(config, "workerinput"):
        return
    notebooks = sorted({item.path for item in items if item.path.suffix == ".ipynb"}, key=committed_seconds, reverse=True)
    rank = {notebook: i for i, notebook in enumerate(notebooks)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))  # stable: cells and unit tests keep their order
