import pytest
import torch
import torch.nn.functional as F

from fslib.methods import ZeroShot
from fslib.methods.clip_cite import dva_loss, interpolate_weights, make_variant, same_class_negatives, scl_loss, vld_loss
from fslib.studies.clip_cite import at_ratio, interpolation_path
from tests.conftest import make_dataset


def test_vld_is_zero_when_student_equals_teacher():
    similarity = torch.randn(5, 5) * 10
    assert vld_loss(similarity, similarity).item() == pytest.approx(0.0, abs=1e-6)
    assert vld_loss(similarity, torch.randn(5, 5)).item() > 0


def test_same_class_mask_removes_exactly_the_other_same_class_pairs():
    labels = torch.tensor([0, 1, 0, 2, 1])
    expected = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in [(0, 2), (2, 0), (1, 4), (4, 1)]:
        expected[i, j] = True
    assert torch.equal(same_class_negatives(labels), expected)


def test_scl_by_hand_and_equal_to_flyp_without_repeated_classes():
    s = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    manual = -(F.log_softmax(s, 1).diagonal().sum() / 2) - (F.log_softmax(s.T, 1).diagonal().sum() / 2)
    assert scl_loss(s, torch.tensor([0, 1])).item() == pytest.approx(manual.item())
    assert scl_loss(s, torch.tensor([0, 1])) == scl_loss(s, None)  # one image per class: FLYP
    masked = scl_loss(s, torch.tensor([0, 0]))  # same class: only the positives remain, loss 0
    assert masked.item() == pytest.approx(0.0, abs=1e-6)


def test_dva_uses_the_normalised_classifier():
    features = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    classifier = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # norms must not matter
    expected = F.cross_entropy(10 * torch.eye(2), torch.tensor([0, 1]))
    assert dva_loss(features, classifier, torch.tensor([0, 1]), 10.0).item() == pytest.approx(expected.item())


def test_interpolation_endpoints():
    pre = {"w": torch.zeros(3), "steps": torch.tensor([7])}
    ft = {"w": torch.ones(3), "steps": torch.tensor([9])}
    assert torch.equal(interpolate_weights(ft, pre, 0.0)["w"], pre["w"])
    assert torch.equal(interpolate_weights(ft, pre, 1.0)["w"], ft["w"])
    assert torch.equal(interpolate_weights(ft, pre, 0.5)["w"], torch.full((3,), 0.5))
    assert torch.equal(interpolate_weights(ft, pre, 0.5)["steps"], pre["steps"])  # integers are not blended


def test_interpolating_into_a_model_gives_the_same_tensors():
    pre, ft = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    target = torch.nn.Linear(3, 2)
    expected = interpolate_weights(ft.state_dict(), pre.state_dict(), 0.3)
    interpolate_weights(ft.state_dict(), pre.state_dict(), 0.3, into=target)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in expected.items())


def test_fit_and_interpolate_the_whole_model(random_clip):
    data = make_dataset(3, 4)
    method = make_variant(random_clip, "CLIP-CITE", epochs=1, lr=1e-4, batch_size=6).fit(data)
    assert method.logits(data).shape == (12, 3) and method.logits(data, ["a", "b"]).shape == (12, 2)
    pretrained = method.interpolated(0.0)
    assert all(torch.equal(a, b) for a, b in zip(pretrained.parameters(), random_clip.model.parameters()))
    assert not torch.equal(method.interpolated(1.0).visual.proj, random_clip.model.visual.proj)
    torch.testing.assert_close(method.logits(data, ratio=0.0), ZeroShot(random_clip).fit(data).logits(data))
    with pytest.raises(ValueError, match="unknown variant 'LoRA'; allowed: CLIP-CITE, fine-tuning, FLYP, DVA, SCL"):
        make_variant(random_clip, "LoRA")


def test_frozen_variants_train_what_their_names_say(random_clip):
    data = make_dataset(3, 4)
    runs = {v: make_variant(random_clip, v, epochs=1, lr=1e-3, batch_size=6).fit(data) for v in ("CLIP-CITE", "FrozenTC", "FrozenTE")}
    pre = random_clip.model.state_dict()
    moved = lambda v, key: not torch.equal(runs[v].finetuned[key], pre[key])
    assert moved("FrozenTE", "visual.proj") and not moved("FrozenTE", "text_projection")
    assert moved("CLIP-CITE", "text_projection") and moved("FrozenTC", "text_projection")
    classifier = 3 * random_clip.model.text_projection.shape[1]
    assert runs["CLIP-CITE"].trainable_parameters() - runs["FrozenTC"].trainable_parameters() == classifier
    text = sum(p.numel() for n, p in random_clip.model.named_parameters() if not n.startswith("visual.") and n != "logit_scale")
    assert runs["CLIP-CITE"].trainable_parameters() - runs["FrozenTE"].trainable_parameters() == text


def test_one_fit_is_scored_along_the_interpolation_path(random_clip):
    import pandas as pd

    from fslib.evaluation import settings_of

    data = make_dataset(3, 4)
    method = make_variant(random_clip, "fine-tuning", epochs=1, lr=1e-3, batch_size=6).fit(data)
    variations = interpolation_path([0.0, 1.0])
    assert settings_of(method, variations) == [{"ratio": 0.0}, {"ratio": 1.0}]
    assert settings_of(ZeroShot(random_clip), variations) == [{}]  # scored once, as it is
    fitted = method.logits(data)
    assert not torch.equal(method.logits(data, ratio=0.0), fitted) and torch.equal(method.logits(data), fitted)
    rows = pd.DataFrame({"method": ["a", "a", "b"], "ratio": [0.0, 1.0, 1.0], "accuracy": [1.0, 2.0, 3.0]})
    relabelled = at_ratio(rows, {"zero-shot": ("a", 0.0), "tuned": ("a", 1.0)})
    assert relabelled.method.tolist() == ["zero-shot", "tuned"] and relabelled.accuracy.tolist() == [1.0, 2.0]
