import copy

import numpy as np
import pytest
import torch

import pandas as pd

from fslib.fewshot import EpisodeSampler
from fslib.methods.mamf import (PromptFineTune, fine_tune, fomaml_task_update, mamf_budget, mamf_chunks, meta_train,
                               meta_train_on_episodes, sample_tasks, task_count)
from fslib.models import prompt_tokens
from fslib.features import preprocess_images
from fslib.studies.mamf import at_chosen, choose_settings, compare_strategies, train_arm
from tests.conftest import make_dataset


@pytest.mark.parametrize("n, k", [(2, 31), (3, 19), (4, 14), (5, 10), (6, 8), (7, 6), (8, 4), (9, 3), (10, 1)])
def test_task_count_matches_the_official_pairs_for_ten_classes(n, k):
    assert task_count(n, 10) == k  # notes §2.1: K = round(ln 0.001 / ln(1 - n/C))


def test_task_count_rejects_impossible_n_way():
    with pytest.raises(ValueError, match=r"n_way=11 must lie in \[2, 10\]"):
        task_count(11, 10)


def test_sampled_tasks_are_uniform_subsets():
    tasks = sample_tasks(10, 3, 2000, np.random.default_rng(0))
    assert all(len(set(t)) == 3 for t in tasks)
    counts = np.bincount(np.concatenate(tasks), minlength=10) / 2000
    assert np.allclose(counts, 0.3, atol=0.04)  # each class is in a task with probability n/C


def test_fomaml_update_matches_a_hand_computed_step():
    # model: y = w * x (one weight), loss (w x - y)^2; w0 = 1
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    loss_fn = lambda params, b: ((b[0] * params["weight"][0, 0] - b[1]) ** 2).sum()
    support, query = [(torch.tensor(2.0), torch.tensor(6.0))], [(torch.tensor(1.0), torch.tensor(0.0))]
    outer = torch.optim.SGD(model.parameters(), lr=0.1)
    fomaml_task_update(model, loss_fn, support, query, inner_lr=0.05, outer_optimizer=outer)
    # inner: dL/dw = 2 x (w x - y) = 2*2*(2-6) = -16 -> w' = 1 + 0.05*16 = 1.8
    # outer: gradient at w' on the query: 2*1*(1.8*1 - 0) = 3.6 -> w = 1 - 0.1*3.6 = 0.64
    assert model.weight.item() == pytest.approx(0.64)


def test_meta_test_fine_tuning_never_leaks_across_tasks(random_clip):
    start = {k: v.clone() for k, v in random_clip.model.state_dict().items()}
    task_a, task_b = make_dataset(3, 4, seed=0), make_dataset(3, 4, seed=1)
    method = PromptFineTune(random_clip, epochs=2, lr=1e-3, batch_size=8)
    first = method.fit(task_a).logits(task_a)
    method.fit(task_b)
    again = method.fit(task_a).logits(task_a)
    torch.testing.assert_close(first, again)  # task A from the same weights both times
    assert all(torch.equal(v, start[k]) for k, v in random_clip.model.state_dict().items())
    assert not torch.equal(first, PromptFineTune(random_clip, epochs=0).fit(task_a).logits(task_a))


def test_zero_epochs_is_one_prompt_zero_shot(random_clip):
    data = make_dataset(3, 2)
    logits = PromptFineTune(random_clip, epochs=0).fit(data).logits(data)
    from fslib.features import encode_images
    text = random_clip.encode_text([f"a photo of a class{c}." for c in range(3)])
    expected = random_clip.logit_scale * encode_images(random_clip, data, progress=False) @ text.T
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["finetune", "mamf", "fomaml"])
def test_meta_train_changes_a_copy_only(random_clip, strategy):
    before = random_clip.model.visual.proj.clone()
    trained = meta_train(random_clip, make_dataset(4, 4), strategy, n_way=2, lr=1e-3, batch_size=8, progress=False)
    assert torch.equal(random_clip.model.visual.proj, before)
    assert not torch.equal(trained.model.visual.proj, before)


@pytest.mark.parametrize("strategy", ["mamf", "fomaml"])
def test_meta_train_on_episodes_changes_a_copy_and_is_seeded(random_clip, strategy):
    episodes = [EpisodeSampler([make_dataset(4, 6)], n_way=2, k_shot=2, q_query=2, seed=0).sample() for _ in range(3)]
    before = random_clip.model.visual.proj.clone()
    runs = [meta_train_on_episodes(random_clip, episodes, strategy, lr=1e-3, seed=1) for _ in range(2)]
    assert torch.equal(random_clip.model.visual.proj, before)
    assert not torch.equal(runs[0].model.visual.proj, before)
    assert torch.equal(runs[0].model.visual.proj, runs[1].model.visual.proj)  # the same seed, the same weights
    with pytest.raises(ValueError, match="strategy='finetune' has no tasks; allowed here: mamf, fomaml"):
        meta_train_on_episodes(random_clip, episodes, "finetune")


def test_mamf_budget_by_hand():
    data = make_dataset(4, 4)  # 4 classes x 4 images; n = 2 -> K = round(ln 0.001 / ln 0.5) = 10 tasks of 8 images
    assert task_count(2, 4) == 10
    budget = mamf_budget(data, 2, epochs=2, batch_size=3, seed=0)
    assert (budget.steps, budget.images) == (10 * 2 * 3, 10 * 2 * 8)  # ceil(8 / 3) = 3 steps per epoch


def test_matched_fine_tuning_takes_mamf_steps_and_images(random_clip):
    data = make_dataset(4, 4)
    _, mamf = train_arm(random_clip, data, "MAMF", 2, lr=1e-4, seed=0, batch_size=32)
    _, matched = train_arm(random_clip, data, "fine-tuning", 2, lr=1e-4, seed=0, batch_size=32)
    _, official = train_arm(random_clip, data, "fine-tuning (official)", 2, lr=1e-4, seed=0, epochs=2, batch_size=32)
    assert matched == mamf and (mamf.steps, mamf.images) == (10, 80)
    assert (official.steps, official.images) == (2, 32)  # 2 epochs over all 16 images, one batch each
    with pytest.raises(ValueError, match="unknown arm 'MAML'; allowed: fine-tuning, "):
        train_arm(random_clip, data, "MAML", 2, lr=1e-4, seed=0)


def test_choose_settings_takes_each_arms_best_mean_and_the_first_on_ties():
    rows = [("MAMF", 1e-5, 0, 50), ("MAMF", 1e-5, 0, 70), ("MAMF", 1e-4, 5, 80), ("MAMF", 1e-4, 0, 40),
            ("FOMAML", 1e-5, 0, 60), ("FOMAML", 1e-4, 5, 60), ("zero-shot", 0.0, 0, 99)]
    validation = pd.DataFrame(rows, columns=["method", "lr", "adapt_epochs", "accuracy"])
    assert choose_settings(validation) == {"MAMF": (1e-4, 5), "FOMAML": (1e-5, 0)}


def test_compare_strategies_names_unknown_arms(random_clip):
    with pytest.raises(ValueError, match=r"unknown arms \['MAML'\]"):
        compare_strategies(random_clip, ["colors"], [2], 1, 1, [1], {"MAML": [(1e-5, 0)]})


def test_mamf_chunks_are_its_steps_per_task_and_add_up_to_its_budget():
    data = make_dataset(4, 4)  # 4 images per class: a 2-way task holds 8
    chunks = mamf_chunks(data, 2, epochs=3, batch_size=5, seed=0)
    assert chunks == [3 * 2] * task_count(2, 4)  # ceil(8 / 5) = 2 steps per epoch
    assert sum(chunks) == mamf_budget(data, 2, 3, 5, seed=0).steps


def _fine_tuned(clip, resets, steps=2, lr=1e-3):
    data = make_dataset(4, 4)
    model = copy.deepcopy(clip.model)
    before = [p.detach().clone() for p in model.parameters()]
    fine_tune(model, preprocess_images(clip, data), torch.as_tensor(data.labels), prompt_tokens(clip, data), 1, lr,
              8, seed=0, steps=steps, optimizer_resets=resets)
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


def test_a_fresh_adam_per_chunk_moves_each_weight_at_most_lr_per_step(random_clip):
    # Adam's first step from fresh state is lr * g / |g| (bias-corrected): a reset every step caps each step at lr
    reset = _fine_tuned(random_clip, [1, 1])
    assert max(float(d.abs().max()) for d in reset) <= 2e-3 * (1 + 1e-4)
    assert all(torch.equal(a, b) for a, b in zip(_fine_tuned(random_clip, [2]), _fine_tuned(random_clip, None)))
    assert any(not torch.allclose(a, b) for a, b in zip(reset, _fine_tuned(random_clip, None)))
    with pytest.raises(ValueError, match=r"optimizer_resets \[1, 2\] add up to 3 steps, not the 2 asked for"):
        _fine_tuned(random_clip, [1, 2])


def test_at_chosen_keeps_zero_shot_and_each_arms_chosen_settings():
    rows = [("zero-shot", 0.0, 0), ("MAMF", 1e-4, 5), ("MAMF", 1e-4, 0), ("MAMF", 1e-5, 5), ("FOMAML", 1e-5, 0)]
    table = pd.DataFrame(rows, columns=["method", "lr", "adapt_epochs"])
    kept = at_chosen(table, {"MAMF": (1e-4, 5), "FOMAML": (1e-5, 0)})
    assert kept.values.tolist() == [["zero-shot", 0.0, 0], ["MAMF", 1e-4, 5], ["FOMAML", 1e-5, 0]]
