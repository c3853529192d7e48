"""``scale="paper-real"`` end to end where no real weights or datasets can be fetched: a randomly initialised
ViT-B-32 saved as a local checkpoint and a small image folder in the CoOp layout stand in for them. 05 (the
cheapest notebook that prints a paper's numbers) must validate the preset, print its expected cost, and render the
paper-beside-run table, with no NaN in either."""
import json

import open_clip
import papermill
import torch

from fslib.bench import make_jpeg_folder
from fslib.paths import checkout_dir


def _outputs(cell: dict) -> str:
    return "".join("".join(o.get("text") or o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))


def test_05_runs_the_real_preset_on_a_random_vit_b_32_checkpoint_and_a_jpeg_folder(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit_b_32.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), checkpoint)
    folder = str(make_jpeg_folder(tmp_path / "coop_like", images=40, classes=4, size=64))
    notebooks = checkout_dir() / "notebooks"
    out = tmp_path / "05_real.ipynb"
    papermill.execute_notebook(
        str(notebooks / "05_clip_cite.ipynb"), str(out), cwd=str(notebooks), progress_bar=False,
        parameters=dict(scale="paper-real", model="ViT-B-32", pretrained=str(checkpoint), datasets=folder,
                        curve_dataset=folder, shots=2, epochs=1, seeds=[1, 2], curve_shots=[1], test_per_class=2,
                        steps=2, views=1))
    cells = json.loads(out.read_text())["cells"]
    cost = _outputs(next(c for c in cells if "bench.expected_cost" in "".join(c["source"])))
    assert "images/s training (both towers)" in cost and "total" in cost and "nan" not in cost.lower()
    beside = _outputs(next(c for c in cells if "reference.beside_run" in "".join(c["source"])))
    assert "This run does not match its protocol (model 'ViT-B-32', the paper's 'ViT-B-16'" in beside
    assert "CLIP-CITE (paper: CLIP-CITE)" in beside and "81.06" in beside and "context" in beside
    assert "nan" not in beside.lower()
