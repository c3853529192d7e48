import pytest
import torch
import torch.nn.functional as F

from fslib.features import preprocess_images
from fslib.methods.apex import (APEX_TEMPLATE, Ensemble, PromptedCLIP, class_distances, ensemble_weights,
                                relative_transfer_difficulty)
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
    with_ensemble = method.logits(data, ensemble=Ensemble("both"))
    torch.testing.assert_close(with_ensemble, method.logits(data), rtol=0, atol=1e-5)  # VPT+TA: no ensemble
    assert method.ensemble.modality == "off"  # a scoring call's setting leaves the fitted method as it was


def test_class_distances_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d_avg, d_nn = class_distances(train, torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
    # cosines to the two training classes: (1, 0) and (0.6, 0.8)
    torch.testing.assert_close(d_avg, torch.tensor([0.5, 0.3]))
    torch.testing.assert_close(d_nn, torch.tensor([0.0, 0.2]))


def test_deep_text_prompts_train_one_set_of_tokens_per_layer(random_clip):
    names = ["class0", "class1"]
    shallow = PromptedCLIP(random_clip, text_tokens=2, adapter=False, ensemble=False)
    deep = PromptedCLIP(random_clip, text_tokens=2, text_depth=3, adapter=False, ensemble=False)
    width = random_clip.model.token_embedding.embedding_dim
    assert deep.trainable_parameters() == 3 * 2 * width and shallow.trainable_parameters() == 2 * width
    with torch.no_grad():
        assert not torch.allclose(deep.text_features_prompted(names), shallow.text_features_prompted(names))
    with pytest.raises(ValueError, match="text_depth=99 must lie in"):
        PromptedCLIP(random_clip, text_depth=99)


def test_one_modality_ensembles_mix_only_that_modality(random_clip):
    data = make_dataset(4, 2)
    method = PromptedCLIP(random_clip, visual_depth=1, epochs=0).fit(make_dataset(2, 2))
    with torch.no_grad():  # a trained-looking adapter, so that mixing the text features changes them
        method.adapter_matrix.add_(0.5 * torch.randn(method.adapter_matrix.shape, generator=torch.Generator().manual_seed(0)))
    prompted, clean = method.image_features_pair(data)
    logits = {}
    for modality in ("both", "text", "image"):
        logits[modality] = method.logits_from_features(prompted, clean, data.classnames, Ensemble(modality, fixed_alpha=0.5))
    text_only = Ensemble("text", fixed_alpha=0.5)
    torch.testing.assert_close(logits["text"], method.logits_from_features(prompted, None, data.classnames, text_only))
    assert not torch.allclose(logits["image"], logits["both"]) and not torch.allclose(logits["text"], logits["both"])
    with pytest.raises(ValueError, match="unknown ensemble modality 'audio'; allowed: both, text, image, off"):
        PromptedCLIP(random_clip, ensemble_modality="audio")


def test_gains_over_zero_shot_pair_each_method_with_zero_shot_on_the_same_seed():
    import pandas as pd

    from fslib.studies.apex import gains_over_zero_shot

    results = pd.DataFrame([(1, "zero-shot", 50.0), (1, "VPT", 60.0), (2, "zero-shot", 40.0), (2, "VPT", 70.0)],
                           columns=["seed", "method", "accuracy"]).assign(level=0.4, part="base")
    gains = gains_over_zero_shot(results)
    assert gains[["seed", "level", "method", "gain"]].values.tolist() == [[1, 0.4, "VPT", 10.0], [2, 0.4, "VPT", 30.0]]


def test_the_best_fixed_alpha_is_the_mean_of_the_tied_best():
    import pandas as pd

    from fslib.studies.apex import best_fixed_alpha

    sweep = pd.DataFrame([(1, 1.0, 0.0, 50.0), (1, 1.0, 0.5, 60.0), (1, 1.0, 1.0, 55.0),
                          (1, 2.0, 0.0, 90.0), (1, 2.0, 0.5, 90.0), (1, 2.0, 1.0, 80.0)],
                         columns=["seed", "level", "alpha", "accuracy"])
    assert best_fixed_alpha(sweep).values.tolist() == [[1, 1.0, 0.5], [1, 2.0, 0.25]]


def test_a_difficulty_trend_over_named_datasets_runs_over_their_rtd_and_is_never_decided():
    import pandas as pd

    from fslib import evidence
    from fslib.studies.apex import difficulty_trend

    claim = evidence.declare("02_apex_test", [dict(key="t", claim="gain grows with difficulty", paper_ref="test",
                                                   sides=("gain", "difficulty"), kind="trend")])["t"]
    difficulty = pd.DataFrame({"level": ["dtd", "eurosat", "pets"], "rtd": [0.2, 0.8, 0.5]})
    # the gain follows RTD exactly in every seed: rho = 1 over the datasets' means, yet not decided
    table = pd.DataFrame([{"seed": s, "level": d, "gain": 10 * r + s} for s in (1, 2, 3)
                          for d, r in zip(difficulty.level, difficulty.rtd)])
    verdict = difficulty_trend(claim, table, "gain", difficulty, named_datasets=True)
    assert verdict.verdict == "inconclusive" and verdict.estimate == pytest.approx(1.0)
    assert verdict.interval_kind == "bootstrap"
    on_dial = difficulty_trend(claim, table.assign(level=table.level.map({"dtd": 0.0, "pets": 0.4, "eurosat": 0.8})),
                               "gain", difficulty, named_datasets=False)
    assert on_dial.estimate == pytest.approx(1.0) and on_dial.interval_kind == "levels"  # 3 levels: too few to decide
