"""Where ``make test`` cannot compare the notebooks' committed outputs (``notebooks_skip_reason`` in the repository's
``conftest.py``: a CPU that would emulate their bf16), every notebook still runs end to end at a small scale, in
fp32, so a cell that breaks fails the tests there too. Nothing is read from these runs: at this scale the numbers
mean nothing. Where the committed outputs are compared under nbval, these are skipped (the full runs cover them)."""
from pathlib import Path

import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
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


def test_every_notebook_has_a_small_run():
    assert sorted(SMALL) == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("notebook", sorted(SMALL))
def test_notebook_runs_end_to_end_at_a_small_scale(notebook, notebooks_compared, tmp_path, monkeypatch):
    if notebooks_compared:
        pytest.skip("the notebooks run in full under nbval, their verdict cells compared")
    monkeypatch.delenv("FSLIB_CACHE")  # the project's feature cache: the encodings of the frozen tower are shared
    monkeypatch.setenv("FSLIB_PROGRESS", "text")
    papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(tmp_path / f"{notebook}.ipynb"),
                               parameters={**SMALL[notebook], "seeds": SEEDS}, cwd=str(NOTEBOOKS), kernel_name="python3",
                               progress_bar=False)
