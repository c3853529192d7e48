"""Test runs write nothing into the checkout: figures and claim records of the notebooks that nbval
executes go to a temporary folder (the kernels inherit this environment)."""
import os
import tempfile

_scratch = tempfile.mkdtemp(prefix="fslib-test-")
os.environ.setdefault("FSLIB_FIGURES", os.path.join(_scratch, "figures"))
os.environ.setdefault("FSLIB_RUNS", os.path.join(_scratch, "runs"))
