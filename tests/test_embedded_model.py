"""The shipped tiny CLIP: it loads through open_clip, its card is honest, and the suite spans the spectrum."""
import json

import pytest

from fslib.studies.zero_shot import zero_shot_table
from fslib.models import EMBEDDED_CHECKPOINT, load_clip
from fslib.world.pretrain import ASSETS
from fslib.world.suite import WORLD_DATASETS

CARD = json.loads((ASSETS / "MODEL_CARD.json").read_text())


@pytest.fixture(scope="module")
def spectrum():
    return zero_shot_table(load_clip(), list(WORLD_DATASETS)).set_index("dataset")


def test_checkpoint_is_small_and_loads_through_open_clip():
    assert EMBEDDED_CHECKPOINT.stat().st_size < 21e6
    clip = load_clip()
    assert clip.name == "fslib-tiny-vit" and 5 < sum(p.numel() for p in clip.model.parameters()) / 1e6 < 10


def test_model_card_numbers_are_what_the_code_measures(spectrum):
    for name, row in CARD["zero_shot_test_accuracy"].items():
        assert spectrum.loc[name, "zero_shot"] == pytest.approx(row["zero_shot"], abs=0.2), name


def test_zero_shot_spans_easy_to_near_chance(spectrum):
    easy = spectrum[spectrum.zero_shot >= 85]
    hard = spectrum[spectrum.zero_shot <= 2 * spectrum.chance]
    assert len(easy) >= 2, spectrum
    assert len(hard) >= 2, spectrum
    assert len(spectrum) - len(easy) - len(hard) >= 2  # and some in between


def test_pretraining_is_deterministic_for_its_seed(tmp_path):
    """The card's reproducibility rests on this: the same seed gives bit-identical weights (a short run)."""
    import torch

    from fslib.world.pretrain import pretrain

    recipe = dict(seed=3, steps=3, batch_size=8, lr=1e-3, weight_decay=0.1, warmup=1, bf16=True)
    first, second = pretrain(out=tmp_path / "a.pt", **recipe), pretrain(out=tmp_path / "b.pt", **recipe)
    assert first["loss_curve"] == second["loss_curve"]
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = pretrain(out=tmp_path / "c.pt", **{**recipe, "seed": 4})
    assert other["loss_curve"] != first["loss_curve"]
