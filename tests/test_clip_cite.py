import pytest
import torch
import torch.nn.functional as F

from fslib.methods.clip_cite import (dva_loss, interpolate_weights, make_variant, same_class_negatives, scl_loss,
                                     vld_loss)
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


def test_fit_and_interpolate_the_whole_model(random_clip):
    data = make_dataset(3, 4)
    method = make_variant(random_clip, "CLIP-CITE", epochs=1, lr=1e-4, batch_size=6).fit(data)
    assert method.logits(data).shape == (12, 3) and method.logits(data, ["a", "b"]).shape == (12, 2)
    method.set_interpolation(0.0)
    assert all(torch.equal(a, b) for a, b in zip(method.model.parameters(), random_clip.model.parameters()))
    method.set_interpolation(1.0)
    assert not torch.equal(method.model.visual.proj, random_clip.model.visual.proj)
    with pytest.raises(ValueError, match="unknown variant 'LoRA'; allowed: CLIP-CITE, fine-tuning, FLYP"):
        make_variant(random_clip, "LoRA")
