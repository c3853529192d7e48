import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fslib.evaluation import evaluate
from fslib.features import preprocess_images
from fslib.fewshot import EpisodeSampler
from fslib.methods.smat import SMAT, SparseInterpolatedExperts, adapt_to_tasks, hard_concrete, is_open, meta_train
from fslib.methods.smat_region import _REGION_INPUTS, ExpertRegion, stack_tasks, task_tensors
from fslib.protocols import make_benchmark, novel_class_split
from fslib.studies.smat import evaluate_experts
from tests.conftest import make_dataset


@pytest.fixture(scope="module")
def episode(random_clip):
    return EpisodeSampler([make_dataset(4, 6)], n_way=3, k_shot=2, q_query=2, seed=0).sample()


def test_hard_concrete_is_deterministic_and_stretched():
    log_alpha = torch.tensor([-10.0, 0.0, 10.0])
    assert torch.equal(hard_concrete(log_alpha, False), torch.tensor([0.0, 0.5 * 1.2 - 0.1, 1.0]))
    # training uses the official u = 0.5 sample at β = 2/3: an entry at log α = -2 is closed in training
    # (σ(-3) · 1.2 - 0.1 < 0) but still open at test (σ(-2) · 1.2 - 0.1 > 0)
    assert torch.equal(hard_concrete(log_alpha, True), hard_concrete(log_alpha, True))
    assert hard_concrete(torch.tensor(-2.0), True) == 0 and hard_concrete(torch.tensor(-2.0), False) > 0


def test_is_open_is_where_the_test_time_gate_is_nonzero():
    log_alpha = torch.linspace(-6, 6, 10001)
    log_alpha = log_alpha[(log_alpha - math.log(1 / 11)).abs() > 1e-5]  # float rounding aside, at the threshold itself
    assert torch.equal(is_open(log_alpha), hard_concrete(log_alpha, False) > 0)
    assert is_open(torch.tensor(-2.39)) and not is_open(torch.tensor(-2.40))  # -ln 11 = -2.3979


@pytest.mark.parametrize("blocks", [None, 1, 2])
def test_expert_region_from_cached_tokens_matches_the_whole_tower(random_clip, episode, blocks):
    """The cached trunk and the class-token-only last block give open_clip's own features."""
    region = ExpertRegion(random_clip, blocks)
    with torch.no_grad():
        ours = region.features(region.pretrained(), region.inputs(episode.query))
        reference = F.normalize(random_clip.model.encode_image(preprocess_images(random_clip, episode.query)), dim=-1)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    assert len(region.pretrained()) == sum(math.prod(s) for s in region.shapes)


def test_expert_region_rejects_a_bad_block_count(random_clip):
    with pytest.raises(ValueError, match="blocks=7 must be None .* or in 1..6"):
        ExpertRegion(random_clip, 7)


def test_all_masks_closed_gives_exactly_the_pretrained_tower(random_clip):
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=3)
    with torch.no_grad():
        experts.delta.normal_()
        experts.log_alpha.fill_(math.log(0.01))  # the lower clamp: every gate is exactly 0
    assert torch.equal(experts.task_params(torch.tensor([0.2, 0.3, 0.5])), experts.pre)
    assert experts.density().max() == 0 and experts.density(merged=True) == 0


def test_router_output_is_a_distribution(random_clip, episode):
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=4)
    task = task_tensors(experts.region, episode)
    for training in (True, False):
        alpha, logits = experts.gates(task.support_pre, task.support_labels, 3, training)
        assert alpha.shape == (4,) and (alpha >= 0).all() and alpha.sum().item() == pytest.approx(1, abs=1e-5)
    assert {"router.skills", "router.keys"} <= {n for n, _ in experts.named_parameters()}


def test_gradients_reach_delta_masks_and_router(random_clip, episode):
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=2)
    with torch.no_grad():
        experts.delta.normal_(std=1e-3)  # at θ_δ = 0 the masks get no task gradient yet (notes §2.3)
    task = task_tensors(experts.region, episode)
    experts.meta_batch_loss([task, task], inner_lr=1e-3, teacher_lr=5e-3, kd_weight=0.25, kd_temperature=2.0,
                            pretrained_teacher=True).backward()
    assert experts.delta.grad.abs().sum() > 0 and experts.log_alpha.grad.abs().sum() > 0
    assert experts.router.skills.grad.abs().sum() > 0 and experts.router.keys.grad.abs().sum() > 0


@pytest.mark.parametrize("blocks", [1, None])
def test_tasks_side_by_side_give_each_task_what_it_gets_alone(random_clip, episode, blocks):
    """A meta-batch's tasks run in one batched pass (vmap); no task's loss or gradient sees another's."""
    experts = SparseInterpolatedExperts(random_clip, "dense", blocks=blocks)
    other = EpisodeSampler([make_dataset(4, 6, seed=1)], n_way=3, k_shot=2, q_query=2, seed=1).sample()
    tasks = [task_tensors(experts.region, e) for e in (episode, other)]
    thetas = (experts.pre + 1e-3 * torch.randn(2, len(experts.pre), generator=torch.Generator().manual_seed(0))).requires_grad_()
    options = dict(inner_lr=1e-3, teacher_lr=5e-3, kd_weight=0.25, kd_temperature=2.0, pretrained_teacher=True)
    together = experts.tasks_loss(stack_tasks(tasks), thetas, **options)
    (grad_together,) = torch.autograd.grad(together.sum(), [thetas])
    for i, task in enumerate(tasks):
        theta = thetas[i:i + 1].detach().requires_grad_()
        alone = experts.tasks_loss(stack_tasks([task]), theta, **options)
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_together[i:i + 1], torch.autograd.grad(alone.sum(), [theta])[0], rtol=1e-4, atol=1e-7)
    shorter = EpisodeSampler([make_dataset(4, 6, seed=1)], n_way=3, k_shot=1, q_query=2, seed=1).sample()
    with pytest.raises(ValueError, match="must share their ways, shots and queries"):
        stack_tasks([tasks[0], task_tensors(experts.region, shorter)])


@pytest.mark.parametrize("finetune", ["none", "full", "lora"])
def test_support_sets_side_by_side_adapt_as_smat_fits_each_alone(random_clip, finetune):
    """Test episodes are adapted side by side; each gets the weights, prototypes and accuracy SMAT.fit gives it alone."""
    episodes = [EpisodeSampler([make_dataset(4, 6, seed=s)], n_way=3, k_shot=2, q_query=2, seed=s).sample() for s in range(3)]
    experts = meta_train(random_clip, episodes * 2, "learned", num_experts=2, meta_batch=2, progress=False)
    tasks = stack_tasks([task_tensors(experts.region, ep) for ep in episodes])
    params, protos = adapt_to_tasks(experts, tasks.support, tasks.support_labels, tasks.support_pre, 3, finetune, steps=3, lr=1e-3)
    rows = evaluate_experts(experts, {"toy": episodes}, "SMAT", finetune, steps=3, lr=1e-3)
    for i, ep in enumerate(episodes):
        alone = SMAT(random_clip, experts, finetune=finetune, steps=3, lr=1e-3).fit(ep.support)
        # batched products round differently, and Adam turns rounding noise in near-zero gradients into steps of
        # up to lr: a few entries move by a fraction of lr = 1e-3 (measured 2e-5); mixed-up sets would move all
        torch.testing.assert_close(params[i], alone.params, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(protos[i], alone.protos, rtol=1e-4, atol=1e-5)
        assert rows[i]["task"] == i and rows[i]["accuracy"] == evaluate(alone, ep.query)
    untuned, _ = adapt_to_tasks(experts, tasks.support, tasks.support_labels, tasks.support_pre, 3)
    assert torch.equal(params, untuned) == (finetune == "none")  # the AdamW steps moved the weights


@pytest.mark.parametrize("tau", [0.5, 0.9])
def test_realised_test_time_sparsity_lands_near_tau(random_clip, tau):
    """The constraint binds what the test uses: the share of entries open at test, per expert."""
    episodes = [EpisodeSampler([make_dataset(4, 6, seed=s)], 3, 2, 2, seed=s).sample() for s in range(8)] * 25
    experts = meta_train(random_clip, episodes, "learned", num_experts=2, sparsity=tau, progress=False)
    realised = 1 - experts.density()
    assert experts.tasks_seen == 200 and (realised - tau).abs().max() <= 0.03, realised


@pytest.mark.parametrize("how", ["random", "magnitude"])
def test_hand_designed_masks_match_the_asked_merged_density(random_clip, how):
    experts = SparseInterpolatedExperts(random_clip, how, num_experts=4, density=0.2)
    assert float(experts.density(merged=True)) == pytest.approx(0.2, abs=0.01)
    assert experts.fixed_masks.shape == (len(experts.pre), 4)
    with pytest.raises(ValueError, match="needs a density in \\(0, 1\\]"):
        SparseInterpolatedExperts(random_clip, how)


@pytest.mark.parametrize("blocks", [1, None])
def test_meta_train_and_test_time_use(random_clip, episode, blocks):
    experts = meta_train(random_clip, [episode] * 4, masks="learned", num_experts=2, meta_batch=2, blocks=blocks, progress=False)
    assert experts.tasks_seen == 4 and experts.delta.abs().sum() > 0
    for finetune in ("none", "full", "lora"):
        logits = SMAT(random_clip, experts, finetune=finetune, steps=2).fit(episode.support).logits(episode.query)
        assert logits.shape == (len(episode.query), 3) and torch.isfinite(logits).all()
    untouched = SMAT(random_clip, experts).fit(episode.support).logits(episode.query)
    zero_lr = SMAT(random_clip, experts, finetune="full", lr=0.0).fit(episode.support).logits(episode.query)
    assert torch.equal(untouched, zero_lr)  # lr = 0 is "no fine-tuning", as in the official grid
    with pytest.raises(ValueError, match="unknown masks 'soft'; allowed: learned, dense"):
        SparseInterpolatedExperts(random_clip, "soft")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_meta_training_and_fine_tuning_honour_the_precision_setting(random_clip, episode, precision):
    """Every SMAT loop runs under the kit's precision (fp16 through a gradient scaler) and stays close to fp32."""
    from fslib.training import precision_scope
    reference = meta_train(random_clip, [episode] * 4, masks="learned", num_experts=2, meta_batch=2, progress=False)
    with precision_scope(precision):
        reduced = meta_train(random_clip, [episode] * 4, masks="learned", num_experts=2, meta_batch=2, progress=False)
        logits = SMAT(random_clip, reduced, finetune="full", steps=2).fit(episode.support).logits(episode.query)
    assert torch.isfinite(logits).all() and not torch.equal(reduced.delta, reference.delta)
    torch.testing.assert_close(reduced.delta, reference.delta, atol=5e-3, rtol=0.05)


def test_novel_class_split_is_disjoint_and_checked():
    base, novel = novel_class_split(12, 5, 5)
    assert base == list(range(7)) and novel == list(range(7, 12))
    with pytest.raises(ValueError, match=r"novel=8 classes must leave n_way=5 .* \(allowed: 5..5\)"):
        novel_class_split(10, 8, 5)


def test_benchmark_tests_in_distribution_on_novel_classes_only():
    bench = make_benchmark(["shapes"], ["counting"], n_way=5, shots=1, queries=2, train_tasks=20, test_tasks=3, val_tasks=2,
                           novel=5, seed=0)
    seen = {name for ep in bench.train for name in ep.support.classnames}
    tested = {name for ep in bench.test["shapes"] for name in ep.support.classnames}
    assert seen and tested and not seen & tested
    assert len(bench.test["counting"]) == 3 and bench.domain("counting") == "OOD" and bench.domain("shapes") == "ID"


def test_a_test_side_dial_draws_the_novel_classes_of_the_domain_it_shares_classes_with():
    bench = make_benchmark(["shapes"], ["counting"], n_way=5, shots=1, queries=2, train_tasks=20, test_tasks=3, val_tasks=2,
                           novel=5, seed=0, dial=["sketch_shift@0", "sketch_shift@1"])
    novel = {name for ep in bench.test["shapes"] for name in ep.support.classnames}
    for level in ("sketch_shift@0", "sketch_shift@1"):
        assert bench.domain(level) == "dial" and len(bench.val[level]) == 2 and len(bench.test[level]) == 3
        assert {name for ep in bench.test[level] for name in ep.support.classnames} == novel
    assert bench.domain("counting") == "OOD" and bench.dial_datasets == ["sketch_shift@0", "sketch_shift@1"]


def _meta_train_on_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a gloo process group, set up as torchrun would (environment variables)."""
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from fslib import distributed
    from fslib.models import load_clip
    assert distributed.setup("cpu") == (rank, world)
    episodes = [EpisodeSampler([make_dataset(4, 6)], n_way=3, k_shot=2, q_query=2, seed=0).sample() for _ in range(8)]
    experts = meta_train(load_clip(), episodes, "learned", num_experts=2, meta_batch=4, seed=3, progress=False)
    torch.save({"losses": experts.losses, **{k: v.detach() for k, v in experts.state_dict().items()}}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_meta_train_like_one(tmp_path):
    """Episodes sharded over 2 ranks, gradients all-reduced: the same losses, masks, λ and router as 1 process."""
    import socket

    from fslib.models import load_clip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_meta_train_on_rank, args=(2, port, str(tmp_path / "rank")), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank.{r}") for r in range(2)]
    episodes = [EpisodeSampler([make_dataset(4, 6)], n_way=3, k_shot=2, q_query=2, seed=0).sample() for _ in range(8)]
    single = meta_train(load_clip(), episodes, "learned", num_experts=2, meta_batch=4, seed=3, progress=False)
    assert len(ranks[0]["losses"]) == len(single.losses) == 2 and single.delta.abs().sum() > 0
    assert ranks[0]["losses"] == ranks[1]["losses"]
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between ranks"
        torch.testing.assert_close(ranks[0][name], value.detach(), rtol=1e-4, atol=1e-5, msg=name)


def test_variants_in_forked_processes_equal_one_process(random_clip, one_and_two_processes):
    """compare_variants and sparsity_tradeoff hand (seed, variant) units to fslib.parallel: two one-thread
    processes give exactly the numbers, densities and chosen LRs of one process on one thread."""
    from fslib.studies.smat import compare_variants, sparsity_tradeoff

    benches = {seed: make_benchmark(["shapes"], ["counting"], n_way=3, shots=1, queries=2, train_tasks=4, test_tasks=2,
                                    val_tasks=1, novel=5, seed=seed, test_per_class=6) for seed in (1, 2)}
    options = dict(finetune_steps=1, finetune_lrs=(0.0, 1e-3), meta_batch=2, curve_every=2)
    def variants_and_tradeoff() -> tuple:
        variants = compare_variants(random_clip, benches, 0.5, 2, **options)
        return variants, sparsity_tradeoff(random_clip, benches, [(0.5, 2), (0.8, 1)], meta_batch=2,
                                           already_trained={(s, 0.5, 2): run.experts["SMAT"] for s, run in variants.items()})

    runs = one_and_two_processes(variants_and_tradeoff)
    (one, one_tradeoff), (two, two_tradeoff) = runs["1"], runs["2"]
    pd.testing.assert_frame_equal(one_tradeoff, two_tradeoff)
    assert set(one_tradeoff.split) == {"test", "val"}
    for seed in benches:
        assert set(one[seed].results.split) == {"test", "val"}  # validation rows: where rivals are chosen
        pd.testing.assert_frame_equal(one[seed].results, two[seed].results)
        pd.testing.assert_frame_equal(one[seed].curves, two[seed].curves)
        assert one[seed].finetune_lr == two[seed].finetune_lr
        assert two[seed].experts["SMAT"].clip is random_clip  # came back pointing at this process's model
        for label, experts in one[seed].experts.items():
            assert torch.equal(experts.density(merged=True), two[seed].experts[label].density(merged=True)), label


def test_trunk_cache_encodes_only_the_images_asked_for(random_clip):
    """A sampled test split is encoded image by image, not whole; rows already cached are not recomputed."""
    data = make_dataset(3, 4, seed=5, name="rows")
    region = ExpertRegion(random_clip, 1)
    part = data.subset([3, 1, 3])
    tokens = region.inputs(part)
    position, table = _REGION_INPUTS[region._table_key("tokens", data)]
    assert len(table) == 2 and (position >= 0).sum() == 2
    region.warm([data.subset([1, 7]), data.subset([7, 0])])  # adds 7 and 0 only
    assert len(_REGION_INPUTS[region._table_key("tokens", data)][1]) == 4
    whole = region._trunk_tokens(data)
    torch.testing.assert_close(tokens, whole[[3, 1, 3]])
    torch.testing.assert_close(region.inputs(data.subset([0, 7])), whole[[0, 7]])
    torch.testing.assert_close(region.pretrained_features(data), region.features(region.pretrained(), whole))


def test_trunk_cache_warmed_in_two_processes_equals_one(random_clip, one_and_two_processes):
    data = make_dataset(3, 4, seed=6, name="warm")

    def warmed():
        _REGION_INPUTS.clear()
        region = ExpertRegion(random_clip, 1)
        region.warm([data.subset([2, 5, 11]), data.subset([5, 0])], chunk=2)
        return region.inputs(data.subset([0, 2, 5, 11])), region.pretrained_features(data.subset([11, 0]))

    results = one_and_two_processes(warmed)
    for ones, twos in zip(results["1"], results["2"]):
        assert torch.equal(ones, twos)


def test_test_time_masks_follow_log_alpha(random_clip):
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=2)
    kept = experts.masks(training=False)
    assert experts.masks(training=False) is kept and kept.max() > 0
    with torch.no_grad():
        experts.log_alpha.fill_(math.log(0.01))  # an in-place update, as the optimiser and the clamp make
    assert experts.masks(training=False).max() == 0


def test_settle_masks_takes_back_an_update_that_closed_too_many(random_clip):
    """An update that closes every open entry of expert 0 is scaled back until 1 - τ of its entries are open."""
    experts = SparseInterpolatedExperts(random_clip, "learned", num_experts=2, sparsity=0.9)
    open_ = len(experts.pre) // 5
    with torch.no_grad():
        experts.log_alpha.fill_(math.log(0.01))  # closed, at the lower clamp
        experts.log_alpha[:open_] = torch.linspace(-2, 2, open_)[:, None]  # 20% open in both experts
        before, before_density = experts.log_alpha.detach().clone(), experts.density()
        experts.log_alpha[:open_, 0] -= 5  # closes them all; the other entries do not move
    density = experts.settle_masks(before, before_density)
    assert 0.1 <= density[0] < 0.1005 and density[1] == before_density[1]
    # the scale is the bisection's over the whole column (log α is linear in it): 0.4796 solves 2 - 5t = -ln 11 + 2
    assert torch.allclose(experts.log_alpha[:open_, 0], before[:open_, 0] - 5 * 0.4796, atol=2e-3)
