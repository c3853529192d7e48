import pytest
import torch
import torch.nn.functional as F

from fslib.features import preprocess_images
from fslib.methods.apex import APEX_TEMPLATE, PromptedCLIP, ensemble_weights, relative_transfer_difficulty
from fslib.methods.baselines import ZeroShot
from tests.conftest import make_dataset


def test_prompt_free_forward_equals_open_clip_image_tower(random_clip):
    pixels = preprocess_images(random_clip, make_dataset(2, 2))
    method = PromptedCLIP(random_clip, visual_depth=0)
    with torch.no_grad():
        torch.testing.assert_close(method.image_features_prompted(pixels), random_clip.model.encode_image(pixels),
                                   rtol=0, atol=1e-6)


def test_visual_prompts_change_the_image_feature(random_clip):
    pixels = preprocess_images(random_clip, make_dataset(2, 1))
    method = PromptedCLIP(random_clip, visual_depth=3)
    with torch.no_grad():
        assert not torch.allclose(method.image_features_prompted(pixels), random_clip.model.encode_image(pixels))
    assert method.visual_prompts.shape == (3, 2, 192) and method.visual_prompts.std() < 0.03


@pytest.mark.parametrize("text_tokens", [0, 2])
def test_identity_adapter_and_initial_prompt_reproduce_zero_shot_logits(random_clip, text_tokens):
    data = make_dataset(3, 2)
    data.templates = [APEX_TEMPLATE]
    method = PromptedCLIP(random_clip, visual_depth=0, text_tokens=text_tokens, adapter=True, ensemble=False, epochs=0)
    expected = ZeroShot(random_clip).fit(data).logits(data)
    torch.testing.assert_close(method.fit(data).logits(data), expected, rtol=1e-4, atol=1e-4)


def test_alpha_is_one_on_seen_classes_and_shrinks_with_distance():
    train = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]]), dim=-1)
    near = F.normalize(torch.tensor([0.8, 0.6, 0.0]), dim=0)
    far = F.normalize(torch.tensor([0.0, 0.2, 1.0]), dim=0)
    alpha = ensemble_weights(train, torch.stack([train[0], train[1], near, far]))
    assert alpha[0] == 1 and alpha[1] == 1  # d_nn = 0 <= epsilon: the adapter is used fully
    assert 1 > alpha[2] > alpha[3] > 0
    d_avg_far = 1 - (train @ far).mean()
    assert alpha[3].item() == pytest.approx(torch.exp(-4.0 * d_avg_far).item())


def test_relative_transfer_difficulty_by_hand():
    assert relative_transfer_difficulty(0.5, 10) == pytest.approx(0.2)  # random 0.1 / zero-shot 0.5
    assert relative_transfer_difficulty(0.1, 10) == pytest.approx(1.0)  # zero-shot no better than chance


def test_fit_trains_only_the_prompts_and_adapter(random_clip):
    data = make_dataset(3, 4)
    before = [p.clone() for p in random_clip.model.parameters()]
    method = PromptedCLIP(random_clip, visual_depth=2, epochs=1, lr=0.5).fit(data)
    assert all(torch.equal(a, b) for a, b in zip(before, random_clip.model.parameters()))
    assert all(p.requires_grad for p in random_clip.model.parameters())  # the shared model is left as it was
    assert not torch.equal(method.adapter_matrix, torch.eye(128))
    assert method.trainable_parameters() == 2 * 2 * 192 + 2 * 128 + 128 * 128 + 128


def test_apex_equals_vpt_ta_on_the_training_classes(random_clip):
    """Why "APEX keeps VPT+TA's base accuracy" is no claim: α = 1 on every training class, so the adaptive
    ensemble returns VPT+TA's own logits there (once a notebook check that could only come out one way)."""
    from fslib.methods.apex import make_family

    data = make_dataset(3, 2)
    data.templates = [APEX_TEMPLATE]
    method = make_family(random_clip, "VPT+TA", epochs=1).fit(data)
    with_ensemble = method.logits(data)
    method.ensemble = False
    torch.testing.assert_close(with_ensemble, method.logits(data), rtol=0, atol=1e-5)
