"""How the tests run the notebooks: nbval executes every notebook at the lesson scale in fp32 (the kernels
inherit this environment), and after its last cell one more test item per notebook, ``claims by value``,
compares the claim records the run wrote with the committed ones (``fslib/records/<notebook>.lesson.json``)
through :func:`fslib.evidence.compare_runs`: estimates and CI bounds within :data:`fslib.evidence.TOLERANCE`,
the same verdict words unless a bound sits within the tolerance of its margin. Plain ``pytest`` does the same
as ``make test`` (``pyproject.toml`` adds ``--nbval-lax notebooks``).

Test runs write nothing into the checkout: figures and claim records go to a temporary folder. Under
pytest-xdist (``make test``: ``-n <cores> --dist loadfile``) each notebook and its check are one unit of
work on one worker, queued longest first as ``make reproduce`` queues them.
"""
import os
import tempfile
from pathlib import Path

_scratch = tempfile.mkdtemp(prefix="fslib-test-")
for name, value in {"FSLIB_FIGURES": os.path.join(_scratch, "figures"), "FSLIB_RUNS": os.path.join(_scratch, "runs"),
                    "FSLIB_SCALE": "lesson", "FSLIB_PRECISION": "fp32", "FSLIB_PROGRESS": "text",
                    "OMP_NUM_THREADS": "1"}.items():  # before torch is imported here or in a kernel
    os.environ.setdefault(name, value)

import pytest  # noqa: E402

from fslib.evidence import committed_file, compare_runs, read_run  # noqa: E402
from fslib.report import committed_seconds  # noqa: E402


class ClaimsByValue(pytest.Item):
    """The notebook's claim records from the run nbval just made, compared by value with the committed run of
    the same scale and parameters."""

    def runtest(self) -> None:
        notebook = self.path.stem
        run = read_run(Path(os.environ["FSLIB_RUNS"]) / "claims" / f"{notebook}.json")
        if not run["claims"]:
            raise AssertionError(f"{notebook} recorded no claims: did its cells run?")
        scale = run["provenance"]["scale"]
        reference_file = committed_file(notebook, scale)
        if not reference_file.exists():
            raise AssertionError(f"no committed {scale}-scale records of {notebook} ({reference_file.name}); "
                                 f"record them with python -m fslib.report --scale {scale} --record {self.path}")
        reference = read_run(reference_file)
        differ = {k: (v, run["provenance"]["parameters"].get(k)) for k, v in reference["provenance"]["parameters"].items()
                  if k not in ("device",) and run["provenance"]["parameters"].get(k) != v}
        if differ:
            raise AssertionError(f"{notebook} ran with other parameters than its committed {scale}-scale run "
                                 f"(committed, now): {differ}; record anew if the change is meant")
        table = compare_runs(run, reference)
        if not table.within.all():
            raise AssertionError(f"{notebook}: claims outside the tolerance of the committed {scale}-scale run "
                                 f"({reference_file.name}):\n" + table[~table.within].to_string(index=False))

    def repr_failure(self, excinfo):
        return str(excinfo.value) if excinfo.errisinstance(AssertionError) else super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::claims by value"


def pytest_collection_modifyitems(config, items):
    """A ``claims by value`` item after each notebook's last cell; under pytest-xdist the notebooks are queued
    longest first by committed wall time (:func:`fslib.report.committed_seconds`), the unit tests fill in last."""
    last_cell = {}
    for index, item in enumerate(items):
        if item.path.suffix == ".ipynb":
            last_cell[item.path] = index
    for path, index in sorted(last_cell.items(), key=lambda pair: pair[1], reverse=True):
        items.insert(index + 1, ClaimsByValue.from_parent(items[index].parent, name="claims by value"))
    notebooks = sorted(last_cell, key=committed_seconds, reverse=True)
    rank = {notebook: i for i, notebook in enumerate(notebooks)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))  # stable: cells and unit tests keep their order
