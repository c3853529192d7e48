"""``scale="paper-real"`` end to end where no real weights or datasets can be fetched: a randomly initialised
ViT-B-32 saved as a local checkpoint and a small image folder in the CoOp layout stand in for them. The notebooks
must validate the preset and print their expected cost; 05 (the cheapest notebook that prints a paper's numbers)
must render the paper-beside-run table; nothing may be NaN."""
import json

import open_clip
import papermill
import pytest
import torch

from fslib.bench import make_jpeg_folder
from fslib.paths import checkout_dir


@pytest.fixture(scope="module")
def real_stand_ins(tmp_path_factory):
    """(a random ViT-B-32 checkpoint, a 4-class JPEG folder cut 50/20/30 into train/val/test)."""
    root = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    checkpoint = root / "vit_b_32.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
    return str(checkpoint), str(make_jpeg_folder(root / "coop_like", images=40, classes=4, size=64))


def _run(notebook: str, out, **parameters) -> list[dict]:
    notebooks = checkout_dir() / "notebooks"
    papermill.execute_notebook(str(notebooks / notebook), str(out), cwd=str(notebooks), progress_bar=False,
                               parameters=dict(scale="paper-real", model="ViT-B-32", **parameters))
    return json.loads(out.read_text())["cells"]


def _outputs(cells: list[dict], code: str) -> str:
    cell = next(c for c in cells if code in "".join(c["source"]))
    return "".join("".join(o.get("text") or o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))


def test_05_runs_the_real_preset_and_puts_the_run_beside_the_paper(real_stand_ins, tmp_path):
    checkpoint, folder = real_stand_ins
    cells = _run("05_clip_cite.ipynb", tmp_path / "05.ipynb", pretrained=checkpoint, datasets=folder,
                 curve_dataset=folder, shots=2, epochs=1, seeds=[1, 2], curve_shots=[1], test_per_class=2, steps=2,
                 views=1)
    cost = _outputs(cells, "bench.expected_cost")
    assert "images/s training (both towers)" in cost and "total" in cost and "nan" not in cost.lower()
    beside = _outputs(cells, "reference.beside_run")
    assert "This run does not match its protocol (model 'ViT-B-32', the paper's 'ViT-B-16'" in beside
    assert "CLIP-CITE (paper: CLIP-CITE)" in beside and "81.06" in beside and "context" in beside
    assert "nan" not in beside.lower()


def test_00_runs_the_real_preset_and_times_only_what_it_does(real_stand_ins, tmp_path):
    checkpoint, folder = real_stand_ins
    cells = _run("00_tour.ipynb", tmp_path / "00.ipynb", pretrained=checkpoint, datasets=folder, shots=[1, 2],
                 seeds=[1, 2])
    cost = _outputs(cells, "bench.expected_cost")
    assert "images/s encoding" in cost and "images/s training" not in cost and "nan" not in cost.lower()
