import math

import pytest
import torch

from fslib.features import preprocess_images
from fslib.fewshot import EpisodeSampler
from fslib.methods.smat import SMAT, SparseInterpolatedExperts, _episode_tensors, hard_concrete, meta_train
from tests.conftest import make_dataset


@pytest.fixture(scope="module")
def episode(random_clip):
    return EpisodeSampler([make_dataset(4, 6)], n_way=3, k_shot=2, q_query=2, seed=0).sample()


def test_hard_concrete_bounds_and_test_value():
    log_alpha = torch.tensor([-10.0, 0.0, 10.0])
    assert torch.equal(hard_concrete(log_alpha, False), torch.tensor([0.0, 0.5 * 1.2 - 0.1, 1.0]))
    sample = hard_concrete(torch.zeros(1000), True)
    assert sample.min() >= 0 and sample.max() <= 1 and ((sample == 0) | (sample == 1)).any()


def test_all_masks_zero_gives_exactly_the_pretrained_tower(random_clip, episode):
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=3)
    with torch.no_grad():
        for d in experts.delta:
            d.normal_()
        for la in experts.log_alpha:
            la.fill_(math.log(0.01))  # the lower clamp: every gate is exactly 0
    params = experts.task_params(torch.tensor([0.2, 0.3, 0.5]), training=False)
    assert all(torch.equal(params[k], v) for k, v in experts.pre.items())
    pixels = preprocess_images(random_clip, episode.query)
    with torch.no_grad():
        torch.testing.assert_close(experts.features(params, pixels),
                                   torch.nn.functional.normalize(random_clip.model.encode_image(pixels), dim=-1))


def test_router_output_is_a_distribution(random_clip, episode):
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=4)
    x_s, y_s, *_ = _episode_tensors(random_clip, episode)
    for training in (True, False):
        alpha, logits = experts.gates(x_s, y_s, 3, training)
        assert alpha.shape == (4,) and (alpha >= 0).all() and alpha.sum().item() == pytest.approx(1, abs=1e-5)
    assert {"router.skills", "router.keys"} <= {n for n, _ in experts.named_parameters()}


def test_gradients_reach_delta_masks_and_router(random_clip, episode):
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=2)
    with torch.no_grad():
        for d in experts.delta:
            d.normal_(std=1e-3)  # at θ_δ = 0 the masks get no task gradient yet (notes §2.3)
    loss = experts.task_loss(*_episode_tensors(random_clip, episode), inner_lr=1e-3, teacher_lr=5e-3,
                             teacher_steps=1, kd_weight=0.25, kd_temperature=2.0)
    loss.backward()
    assert any(d.grad is not None and d.grad.abs().sum() > 0 for d in experts.delta)
    assert any(la.grad is not None and la.grad.abs().sum() > 0 for la in experts.log_alpha)
    assert experts.router.skills.grad.abs().sum() > 0 and experts.router.keys.grad.abs().sum() > 0


def test_sparsity_constraint_reaches_tau_on_a_toy_run(random_clip):
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=2, sparsity=0.9)
    optimizer = torch.optim.SGD(experts.log_alpha.parameters(), lr=1e6)
    assert experts.expert_sparsity().max() < 0.5
    for _ in range(60):
        optimizer.zero_grad()
        (experts.lagrange * (experts.expert_density() - 0.1)).sum().backward()
        optimizer.step()
        experts.update_lagrange(1.0)
    assert (experts.expert_density() <= 0.1 + 1e-3).all()
    assert (experts.expert_sparsity() >= 0.9).all()


@pytest.mark.parametrize("how", ["random", "magnitude"])
def test_hand_designed_masks_have_the_asked_sparsity(random_clip, how):
    experts = SparseInterpolatedExperts(random_clip, how, sparsity=0.8)
    zeros = sum((m == 0).sum().item() for m in experts.fixed_masks) / sum(m.numel() for m in experts.fixed_masks)
    assert zeros == pytest.approx(0.8, abs=0.01)


def test_meta_train_and_test_time_use(random_clip, episode):
    experts = meta_train(random_clip, [episode] * 4, masks="learned", num_experts=2, meta_batch=2, progress=False)
    assert experts.tasks_seen == 4 and any(d.abs().sum() > 0 for d in experts.delta)
    for finetune in ("none", "full", "lora"):
        logits = SMAT(random_clip, experts, finetune=finetune, steps=2).fit(episode.support).logits(episode.query)
        assert logits.shape == (len(episode.query), 3) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="unknown masks 'soft'; allowed: learned, dense"):
        SparseInterpolatedExperts(random_clip, "soft")
