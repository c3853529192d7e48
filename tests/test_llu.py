import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fslib.features import augmented_features, encode_images
from fslib.methods.baselines import ZeroShot
from fslib.methods.llu import LLU, GlobalResidualAdapter, LocalAffine, TipAdapter, locality_weight, reduce_centres, update_field_2d
from tests.conftest import make_dataset


def test_weight_vanishes_far_from_every_centre_and_the_embedding_is_unchanged():
    local = LocalAffine(3)
    with torch.no_grad():
        local.weight.copy_(torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))  # a 90° rotation
    local.centres = torch.tensor([[1.0, 0, 0]])
    far = torch.tensor([[-1.0, 0, 0], [0, 0, 1.0]])  # cosine <= 0 to the centre: dist = 1
    weights = locality_weight(far, local.centres, gamma=0.5, kappa=40.0)
    assert torch.all(weights < 1e-17)
    torch.testing.assert_close(local(far, 0.5, 40.0), far)
    near = torch.tensor([[1.0, 0, 0]])
    assert locality_weight(near, local.centres, 0.5, 40.0).item() == pytest.approx(0.5)  # w = γ on a centre
    assert not torch.allclose(local(near, 0.5, 40.0), near)


def test_weights_are_per_sample_within_a_batch():
    centres = torch.tensor([[1.0, 0.0]])
    batch = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    w = locality_weight(batch, centres, gamma=0.5, kappa=5.0)
    assert len(set(w.tolist())) == 3
    expected = 0.5 * torch.exp(-5.0 * (1 - batch[:, 0].clamp(0, 1)))
    torch.testing.assert_close(w, expected)


def test_identity_init_reproduces_zero_shot_logits(random_clip):
    data = make_dataset(3, 4)
    llu = LLU(random_clip, steps=0).fit(data)
    torch.testing.assert_close(llu.logits(data), ZeroShot(random_clip).fit(data).logits(data), rtol=1e-5, atol=1e-4)


def test_reduce_centres_merges_to_the_normalised_cluster_sum():
    points = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0]]), dim=-1)
    centres = reduce_centres(points, 2)
    assert centres.shape == (2, 2)
    expected = F.normalize(points[0] + points[1], dim=0)
    assert min((centres - expected).norm(dim=1)) < 1e-6


def test_adapters_fit_and_score_new_classes(random_clip):
    data = make_dataset(4, 5)
    features = encode_images(random_clip, data, progress=False)
    for method in (LLU(random_clip, steps=20), GlobalResidualAdapter(random_clip, steps=20), TipAdapter(random_clip)):
        method.fit(data)
        assert method.logits(features).shape == (20, 4)
        assert method.logits(features, ["zebra", "class1"]).shape == (20, 2)
        assert method.fit_seconds is not None and method.fit_seconds >= 0


def test_toy_update_field_is_local():
    points, moves = update_field_2d(np.array([[1.0, 0.0]]), rotation_deg=30, kappa=20.0)
    lengths = np.linalg.norm(moves, axis=1)
    assert lengths[0] > 0.1 and lengths[len(points) // 2] < 1e-6  # at the centre vs opposite it


def test_update_weights_report_gamma_on_the_training_data(random_clip):
    data = make_dataset(3, 4)
    llu = LLU(random_clip, gamma=0.5, kappa=10.0, steps=0, max_centres=100).fit(data)
    weights = llu.update_weights(data, data.classnames)  # every image and prompt is its own centre
    assert weights["images"] == pytest.approx(0.5, abs=1e-4) and weights["class prompts"] == pytest.approx(0.5, abs=1e-4)


def test_llu_is_fast_by_construction_cached_features_and_two_small_maps(random_clip, monkeypatch):
    """LLU's speed claim ("trains in seconds") as the properties that make it so, not as a wall-clock check:
    once the features are cached, fitting never runs the image tower, and it trains two d x d affine maps."""
    data = make_dataset(5, 16)
    encode_images(random_clip, data, progress=False)
    augmented_features(random_clip, data, views=4, seed=0)  # the training views, cached like the features

    def no_tower(*args, **kwargs):
        raise AssertionError("LLU.fit ran the image tower on cached features")

    monkeypatch.setattr(random_clip.model, "encode_image", no_tower)
    llu = LLU(random_clip, steps=5, views=4, seed=0).fit(data)
    d = random_clip.model.text_projection.shape[1]
    assert llu.trainable_parameters() == 2 * (d * d + d)


def test_tuned_on_validation_picks_from_the_grid_on_the_supports_classes(random_clip):
    from fslib.fewshot import base_new_split
    from fslib.protocols import TunedOnValidation

    support, _ = base_new_split(make_dataset(4, 5))
    tuned = TunedOnValidation(lambda alpha: TipAdapter(random_clip, alpha=alpha), [0.5, 2.0],
                              {"toy": make_dataset(4, 3, seed=1)}).fit(support)
    assert tuned.name == "Tip-Adapter" and list(tuned.table.value) == [0.5, 2.0]
    assert tuned.chosen.alpha in (0.5, 2.0) and tuned.logits(support).shape == (len(support), 2)
    memo = {}
    first = TunedOnValidation(lambda alpha: TipAdapter(random_clip, alpha=alpha), [0.5, 2.0], {"toy": make_dataset(4, 3, seed=1)}, memo)
    first.fit(support)
    again = TunedOnValidation(lambda alpha: TipAdapter(random_clip, alpha=alpha), [0.5, 2.0], {}, memo).fit(support)  # no search
    assert again.chosen.alpha == first.chosen.alpha and len(memo) == 1
    with pytest.raises(ValueError, match="no validation split given for 'toy'; given: other"):
        TunedOnValidation(lambda alpha: TipAdapter(random_clip, alpha=alpha), [1.0], {"other": support}).fit(support)


def test_llu_trains_on_augmented_views_but_centres_on_the_shots(random_clip):
    data = make_dataset(3, 4)
    llu = LLU(random_clip, steps=2, views=3, max_centres=100).fit(data)
    features, labels = llu._training_features(data)
    assert features.shape[0] == 3 * len(data) and torch.equal(labels[:len(data)], labels[len(data):2 * len(data)])
    assert len(llu.image_map.centres) == len(data)
