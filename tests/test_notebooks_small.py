"""Where ``make test`` cannot compare the notebooks' committed outputs (``notebooks_skip_reason`` in the repository's
``conftest.py``: a CPU that would emulate their bf16), every notebook still runs end to end at a small scale, in
fp32, so a cell that breaks fails the tests there too, and its verdict cells' outputs are compared with the ones
recorded in ``tests/golden/`` (sanitised as nbval sanitises: decimals masked; verdict words, claims, seed counts
not). At this scale the verdicts say nothing about the papers; the comparison catches a change in what the
notebooks compute. A recording holds on the CPU capability it was made with (fp32 kernels round differently on
others), and is remade with ``FSLIB_UPDATE_GOLDEN=1`` (then read the diff). Where the committed outputs are
compared under nbval, these runs are skipped (the full runs cover them)."""
import configparser
import json
import os
import re
from pathlib import Path

import nbformat
import papermill
import pytest
import torch

TESTS = Path(__file__).resolve().parent
NOTEBOOKS = TESTS.parent / "notebooks"
GOLDEN = TESTS / "golden"
SEEDS = [1, 2]  # the fewest a claim accepts
SMALL = {
    "00_tour": dict(datasets=["colors", "counting"], shots=[1, 2]),
    "01_mamf": dict(n_way=[2, 3, 4], tasks=2, train_per_class=2, lr_grid=[3e-4], adapt_grid=[0, 1], val_tasks=1),
    "02_apex": dict(datasets=["textures", "shapes_sketch", "color_shapes"], shots=2, epochs=1, test_per_class=4,
                    dg_targets=["shapes_sketch"]),
    "03_smat": dict(train_tasks=8, test_tasks=2, val_tasks=1, taus=[0.5], expert_counts=[1], finetune_lrs=[0.0, 1e-3]),
    "04_llu": dict(datasets=["colors", "textures", "shapes_sketch"], shots=2, curve_shots=[1, 2], steps=10, views=1),
    "05_clip_cite": dict(datasets=["textures", "shapes_sketch"], shots=2, epochs=1, lrs=[1e-4, 1e-3], ratios=[0.0, 0.5, 1.0],
                         curve_shots=[1, 2], test_per_class=4),
    "06_compare": dict(shots=[1, 2], base_to_new_datasets=["textures"], base_to_new_shots=2, dg_targets=["shapes_sketch"],
                       dg_shots=1, epochs=1, test_per_class=4, train_tasks=8, test_tasks=1, val_tasks=1, adapt_epochs=1,
                       episode_tests=["textures"]),
}


def sanitise(text: str) -> str:
    """``text`` through the replacements of ``tests/nbval_sanitize.cfg``, the ones nbval applies."""
    config = configparser.ConfigParser()
    config.read(TESTS / "nbval_sanitize.cfg")
    for section in config.sections():
        text = re.sub(config[section]["regex"], config[section]["replace"], text)
    return text


def verdict_outputs(path: Path) -> list[str]:
    """The sanitised text of every verdict cell's outputs (tagged ``nbval-check-output``), stdout and plain-text
    results, as nbval compares them."""
    texts = []
    for cell in nbformat.read(path, as_version=4).cells:
        if "nbval-check-output" in cell.get("metadata", {}).get("tags", []):
            texts.append(sanitise("".join(out.get("text", "") if out["output_type"] == "stream" and out.get("name") == "stdout"
                                          else out.get("data", {}).get("text/plain", "") for out in cell.outputs)))
    return texts


def test_every_notebook_has_a_small_run():
    assert sorted(SMALL) == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def test_sanitise_masks_decimals_only():
    assert sanitise("[HELD] gain = +1.25 [-0.5, 3.0], n = 3 seeds") == "[HELD] gain = D [D, D], n = 3 seeds"


@pytest.mark.parametrize("notebook", sorted(SMALL))
def test_notebook_runs_end_to_end_at_a_small_scale(notebook, notebooks_compared, tmp_path, monkeypatch):
    if notebooks_compared:
        pytest.skip("the notebooks run in full under nbval, their verdict cells compared")
    monkeypatch.delenv("FSLIB_CACHE")  # the project's feature cache: the encodings of the frozen tower are shared
    monkeypatch.setenv("FSLIB_PROGRESS", "text")
    out = tmp_path / f"{notebook}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(out), parameters={**SMALL[notebook], "seeds": SEEDS},
                               cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)
    ran = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "verdict_cells": verdict_outputs(out)}
    golden = GOLDEN / f"{notebook}.json"
    if os.environ.get("FSLIB_UPDATE_GOLDEN") == "1":
        golden.write_text(json.dumps(ran, indent=1, ensure_ascii=False) + "\n")
    recorded = json.loads(golden.read_text())
    if recorded["cpu_capability"] != ran["cpu_capability"]:
        pytest.skip(f"{golden.name} was recorded on a {recorded['cpu_capability']} CPU, this one is {ran['cpu_capability']}: "
                    "fp32 rounds differently; FSLIB_UPDATE_GOLDEN=1 records this CPU's")
    assert ran["verdict_cells"] == recorded["verdict_cells"]
