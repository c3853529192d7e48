import math
from dataclasses import replace

import pandas as pd
import pytest
import torch

from fslib import params
from fslib.evaluation import accuracy, harmonic_mean, mean_ci
from fslib.protocols import select_on_validation

GOOD = dict(model="fslib-tiny-vit", pretrained="embedded", datasets=["shapes", "colors", "counting"], shots=4, seeds=[1, 2, 3],
            device="cpu", precision="auto")


def test_valid_parameters_pass_through(monkeypatch):
    monkeypatch.delenv("FSLIB_SCALE", raising=False)
    p = params.validate({**GOOD, "params": params, "_hidden": 1, "NOTEBOOK": "02_apex"}, "02_apex")
    assert p.shots == 4 and p.datasets == ["shapes", "colors", "counting"] and p.scale == "paper" and p.given == ["datasets", "seeds", "shots"]


def test_parameters_left_at_none_take_the_scale_s_value_and_explicit_ones_win(monkeypatch):
    monkeypatch.delenv("FSLIB_SCALE", raising=False)
    lesson = params.validate({**GOOD, "scale": "lesson", "shots": None, "epochs": None}, "02_apex")
    assert (lesson.shots, lesson.epochs, lesson.datasets) == (2, 1, ["shapes", "colors", "counting"])
    paper = params.validate({**GOOD, "scale": None, "shots": None, "epochs": None}, "02_apex")
    assert (paper.scale, paper.shots, paper.epochs) == ("paper", 16, 10)
    monkeypatch.setenv("FSLIB_SCALE", "lesson")
    assert params.validate({**GOOD, "scale": None, "epochs": None}, "02_apex").epochs == 1
    assert params.validate({**GOOD, "scale": "paper", "epochs": None}, "02_apex").epochs == 10
    with pytest.raises(ValueError, match="kappa=None is not allowed: 02_apex has no scale value for it"):
        params.validate({**GOOD, "kappa": None}, "02_apex")
    with pytest.raises(ValueError, match="scale='huge' is not allowed; allowed: 'paper', 'lesson', 'paper-real'"):
        params.validate({**GOOD, "scale": "huge"}, "02_apex")


def test_every_scaled_parameter_has_a_value_at_every_scale_that_passes_its_check():
    from fslib.scales import PRESETS, REAL, preset
    real_clip = {"model": "ViT-B-16", "pretrained": "openai"}  # a tag is checked by name, nothing is loaded
    for notebook, table in PRESETS.items():
        assert all(set(values) == {"paper", "lesson"} for values in table.values()), notebook
        for scale in ("paper", "lesson"):
            params.validate({**preset(notebook, scale), "scale": scale}, notebook)
        # every notebook has a real preset, and it changes scaled parameters only, so an explicit value still wins
        assert set(REAL[notebook]) <= set(table), notebook
        params.validate({**preset(notebook, "paper-real"), **real_clip, "scale": "paper-real"}, notebook)


def test_the_real_preset_is_the_paper_s_protocol_and_refuses_the_embedded_model(monkeypatch):
    monkeypatch.delenv("FSLIB_SCALE", raising=False)
    from fslib.scales import COOP_BY_NAME
    cells = {"scale": "paper-real", "model": "ViT-B-16", "pretrained": "openai", "datasets": None, "shots": None,
             "epochs": None, "seeds": None, "test_per_class": None}
    apex = params.validate(cells, "02_apex")
    assert (apex.shots, apex.epochs, apex.seeds, apex.test_per_class) == (16, 15, list(range(1, 21)), 0)
    assert apex.datasets == COOP_BY_NAME and "imagenet" not in apex.datasets
    assert params.validate({**cells, "seeds": [1, 2]}, "02_apex").seeds == [1, 2]  # an explicit value wins
    with pytest.raises(ValueError, match="scale='paper-real' runs the paper's protocol on real CLIP, but "
                                         "model='fslib-tiny-vit', pretrained='embedded' is the kit's embedded model"):
        params.validate({**cells, "model": "fslib-tiny-vit", "pretrained": "embedded"}, "02_apex")
    with pytest.raises(ValueError, match="pretrained='none' is random weights"):
        params.validate({**cells, "pretrained": "none"}, "02_apex")
    real = {"scale": "paper-real", "model": "ViT-B-16", "pretrained": "openai"}
    smat = params.validate({**real, "id_datasets": None, "ood_datasets": None, "train_tasks": None, "test_tasks": None,
                            "experts": None, "expert_blocks": None}, "03_smat")  # SMAT's 50k tasks, 600 episodes
    assert (smat.train_tasks, smat.test_tasks, smat.experts, smat.expert_blocks) == (50_000, 600, 8, None)
    assert smat.id_datasets == ["fgvc_aircraft", "dtd", "flowers102"]
    mamf = params.validate({**real, "epochs": None, "shots": None, "seeds": None, "official_epochs": None, "tasks": None},
                           "01_mamf")  # MAMF's official code
    assert (mamf.epochs, mamf.official_epochs, mamf.tasks, mamf.shots, mamf.seeds) == (8, 8, 14, 3, [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="scale='paper-real' is not available for 'toy'; it is available for 00_tour"):
        from fslib.scales import preset
        preset("toy", "paper-real")


@pytest.mark.parametrize("name, value, message", [
    ("shots", 0, "shots=0 is not allowed; it must be an integer >= 1"),
    ("datasets", ["shapes", "imagenet-r"], "unknown dataset 'imagenet-r'; allowed: colors, shapes"),
    ("model", "ViT-Q-99", "model='ViT-Q-99' is not an open_clip model; allowed: "),
    ("pretrained", "openai", "unknown pretrained tag 'openai' for model 'fslib-tiny-vit'"),
    ("device", "tpu", "device='tpu' is not allowed; allowed: 'cpu', 'cuda'"),
    ("seeds", [1, 0], "seeds=0 is not allowed"),
    ("precision", "fp8", "precision='fp8' is not allowed; allowed: 'auto', 'fp32', 'bf16', 'fp16'"),
])
def test_bad_parameter_values_are_named(name, value, message):
    with pytest.raises(ValueError, match=message):
        params.validate({**GOOD, name: value}, "02_apex")


def test_own_image_folders_with_too_few_images_or_classes_are_rejected_before_any_work(tmp_path):
    import numpy as np
    from PIL import Image

    for c, count in (("cat", 30), ("dog", 40)):
        (tmp_path / "pets" / c).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "pets" / c / f"{i}.png")
    pets = str(tmp_path / "pets")
    assert params.validate({**GOOD, "datasets": [pets], "shots": 15}, "05_clip_cite").datasets == [pets]
    with pytest.raises(ValueError, match=f"dataset '{pets}': class 'cat' has 15 training images, fewer than the 16 "
                                         "shots asked; .* at least 32 images"):
        params.validate({**GOOD, "datasets": [pets], "shots": 16}, "05_clip_cite")
    with pytest.raises(ValueError, match=f"dataset '{pets}' has 2 classes; this notebook needs at least 5"):
        params.validate({"id_datasets": [pets], "n_way": 5, "shots": 1}, "03_smat")


def test_unknown_parameter_names_are_rejected():
    # papermill injects `-p shot 5` silently; validation must not
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) 'shot'; 02_apex's parameters: model, pretrained"):
        params.validate({**GOOD, "shot": 5}, "02_apex")


def test_choice_names_allowed_values():
    with pytest.raises(ValueError, match="mode='x' is not allowed; allowed: 'a', 'b'"):
        params.choice("a", "b")("mode", "x")


def test_accuracy_and_harmonic_mean_by_hand():
    assert accuracy([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [1, 0, 0]) == pytest.approx(200 / 3)
    assert harmonic_mean(80.0, 40.0) == pytest.approx(2 * 80 * 40 / 120)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_mean_ci_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, sem = 1/sqrt(3), t_{0.975, 2} = 4.302653
    assert ci.mean == 2.0 and ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert mean_ci([5.0]).half_width == 0.0
    with pytest.raises(ValueError):
        mean_ci([])


def test_list_parameters_accept_papermill_text():
    assert params.int_list("seeds", "1,2,3") == [1, 2, 3]
    assert params.int_list("shots", "[1, 16]") == [1, 16]
    assert params.int_list("shots", 5) == [5]
    assert params.dataset_list("datasets", "shapes, counting") == ["shapes", "counting"]
    with pytest.raises(ValueError, match="shots='x' is not allowed"):
        params.int_list("shots", "1,x")


def test_select_on_validation_scores_val_and_keeps_the_first_best():
    from types import SimpleNamespace

    val = SimpleNamespace(labels=torch.tensor([1, 1, 1, 0]))

    class Guess:  # predicts class `value` for every image, so val accuracy is known by hand
        def __init__(self, value):
            self.value = value

        def fit(self, train):
            return self

        def logits(self, images, classnames=None):
            return torch.nn.functional.one_hot(torch.full((4,), self.value), 2).float()

    best, table = select_on_validation(Guess, [0, 1], train=None, val=val)
    assert best == 1 and table.val_accuracy.tolist() == [25.0, 75.0]
    tied = SimpleNamespace(labels=torch.tensor([0, 1, 0, 1]))
    assert select_on_validation(Guess, [1, 0], train=None, val=tied)[0] == 1


def test_float_lists_accept_papermill_text_and_name_bad_values():
    assert params.positive_float_list("lrs", "1e-5, 3e-5") == [1e-5, 3e-5]
    assert params.positive_float_list("lrs", 0.1) == [0.1]
    with pytest.raises(ValueError, match="lrs: 'fast' is not a number"):
        params.positive_float_list("lrs", "fast")
    with pytest.raises(ValueError, match=r"lrs=-1.0 is not allowed; it must be a number > 0"):
        params.positive_float_list("lrs", [-1.0])
    assert params.fraction_list("taus", "0.5,0.99") == [0.5, 0.99]
    with pytest.raises(ValueError, match=r"taus=1.0 is not allowed; it must be a number in \[0, 1\)"):
        params.fraction_list("taus", [0.5, 1.0])
    with pytest.raises(ValueError, match=r"taus: 'dense' is not a number; it must be a list of numbers in \[0, 1\)"):
        params.fraction_list("taus", "dense")


def test_pretrained_tag_accepts_tags_and_paths_and_names_bad_values():
    assert params.pretrained_tag("pretrained", "openai") == "openai"
    assert params.pretrained_tag("pretrained", "/tmp/ckpt.pt") == "/tmp/ckpt.pt"
    with pytest.raises(ValueError, match="pretrained='' is not allowed; it must be a pretrained tag"):
        params.pretrained_tag("pretrained", "")
    with pytest.raises(ValueError, match="pretrained=3 is not allowed"):
        params.pretrained_tag("pretrained", 3)


def test_seeds_need_two_distinct_values_and_counts_can_be_zero():
    from fslib import params

    assert params.seeds("seeds", "1,2,3") == [1, 2, 3]
    with pytest.raises(ValueError, match=r"seeds=\[1\] is not allowed; claims are decided over seeds"):
        params.seeds("seeds", [1])
    with pytest.raises(ValueError, match="at least 2 distinct"):
        params.seeds("seeds", [2, 2])
    assert params.non_negative_int("test_per_class", 0) == 0
    with pytest.raises(ValueError, match="test_per_class=-1 is not allowed"):
        params.non_negative_int("test_per_class", -1)


def test_average_harmonic_mean_is_hm_of_means_per_seed_and_overall():
    from fslib.evaluation import harmonic_mean, harmonic_mean_by_seed, harmonic_mean_table

    rows = [{"dataset": d, "seed": s, "method": "m", "part": p, "accuracy": a}
            for s in (1, 2) for d, base, new in (("a", 80.0, 40.0), ("b", 60.0, 80.0)) for p, a in (("base", base), ("new", new))]
    results = pd.DataFrame(rows)
    _, average = harmonic_mean_table(results)
    assert average.loc["m", "HM"] == pytest.approx(harmonic_mean(70.0, 60.0))  # not the mean of 53.3 and 68.6
    assert harmonic_mean_by_seed(results, "m").tolist() == pytest.approx([harmonic_mean(70.0, 60.0)] * 2)
    table = harmonic_mean_by_seed(results)  # every method: the per-seed base, new and HM rows a figure draws
    assert table[["method", "seed"]].values.tolist() == [["m", 1], ["m", 2]]
    assert table.HM.tolist() == pytest.approx([harmonic_mean(70.0, 60.0)] * 2)


def test_apex_s_average_is_the_mean_of_the_per_dataset_harmonic_means():
    from fslib.evaluation import harmonic_mean, mean_of_harmonic_means_by_seed

    rows = [{"level": d, "seed": s, "method": "m", "part": p, "accuracy": a}
            for s in (1, 2) for d, base, new in ((0.0, 80.0, 40.0), (1.0, 60.0, 80.0)) for p, a in (("base", base), ("new", new))]
    mean_hm = mean_of_harmonic_means_by_seed(pd.DataFrame(rows), "m", over="level")
    assert mean_hm.tolist() == pytest.approx([(harmonic_mean(80.0, 40.0) + harmonic_mean(60.0, 80.0)) / 2] * 2)
    assert mean_hm.tolist()[0] == pytest.approx(61.0, abs=0.1) and harmonic_mean(70.0, 60.0) == pytest.approx(64.6, abs=0.1)


def test_tables_of_an_image_folder_join_on_its_name(tmp_path, random_clip):
    """00_tour on a folder of one's own: the zero-shot table and the probe's sweep must name the dataset
    alike, or the probe's gain becomes NaN (and a NaN must never become a verdict)."""
    import numpy as np
    from PIL import Image

    from fslib.methods import LinearProbe
    from fslib.protocols import few_shot_sweep
    from fslib.studies.zero_shot import zero_shot_table

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "pets" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "pets" / c / f"{i}.png")
    path = str(tmp_path / "pets")
    spectrum = zero_shot_table(random_clip, [path])
    probe = few_shot_sweep({"linear probe": lambda seed: LinearProbe(random_clip)}, [path], [2], [1, 2], progress=False)
    joined = spectrum.set_index("dataset").join(probe.groupby("dataset").accuracy.mean())
    assert list(joined.index) == ["pets"] and np.isfinite(joined.loc["pets", ["zero_shot", "accuracy"]].astype(float)).all()


def test_non_negative_int_lists_allow_zero_and_name_negatives():
    from fslib import params

    assert params.non_negative_int_list("adapt_grid", "0,5") == [0, 5]
    with pytest.raises(ValueError, match="adapt_grid=-1 is not allowed"):
        params.non_negative_int_list("adapt_grid", [0, -1])
    with pytest.raises(ValueError, match="adapt_grid=0 is not allowed"):
        params.int_list("adapt_grid", [0])


def test_boolean_and_single_dataset_parameters():
    from fslib import params

    assert params.boolean("augment", "False") is False and params.boolean("augment", True) is True
    with pytest.raises(ValueError, match="augment='maybe' is not allowed; it must be True or False"):
        params.boolean("augment", "maybe")
    assert params.dataset_name("dg_source", "shapes") == "shapes"
    with pytest.raises(ValueError, match="give exactly one dataset"):
        params.dataset_name("dg_source", "shapes,textures")


def test_block_count_or_all():
    assert params.positive_int_or_all("expert_blocks", "all") is None
    assert params.positive_int_or_all("expert_blocks", 2) == 2
    with pytest.raises(ValueError, match="expert_blocks=0 is not allowed; allowed: a positive integer or 'all'"):
        params.positive_int_or_all("expert_blocks", 0)


def test_wise_ratios_must_hold_the_two_points_read():
    assert params.wise_ratios("ratios", "1,0.5,0.25") == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"ratios=\[0.25, 1.0\] is not allowed; it must include 0.5"):
        params.wise_ratios("ratios", [0.25, 1.0])
    with pytest.raises(ValueError, match="must be a list of numbers in \\(0, 1\\]"):
        params.wise_ratios("ratios", [0.0, 0.5, 1.0])


def test_optional_parameters_stay_off_unless_given():
    check = params.optional(params.dataset_list)
    assert check("datasets", None) is None and check("datasets", "shapes,textures") == ["shapes", "textures"]
    with pytest.raises(ValueError, match="datasets: unknown dataset 'shapez'"):
        check("datasets", "shapez")
    assert params.dial_levels("levels", "0,0.4,0.8") == [0.0, 0.4, 0.8]
    with pytest.raises(ValueError, match=r"levels=\[0.4, 0.2\] is not allowed; give increasing non-negative levels"):
        params.dial_levels("levels", [0.4, 0.2])


def test_zero_shot_with_one_prompt_uses_the_first_template_only(random_clip):
    from fslib.methods import ZeroShot
    from tests.conftest import make_dataset

    data = make_dataset(3, 2, seed=0)
    data.templates = ["a photo of a {}.", "a drawing of a {}."]
    single = ZeroShot(random_clip, prompts=1).fit(data).logits(data)
    first_only = ZeroShot(random_clip).fit(replace(data, templates=data.templates[:1])).logits(data)
    assert torch.allclose(single, first_only) and not torch.allclose(single, ZeroShot(random_clip).fit(data).logits(data))
    with pytest.raises(ValueError, match="prompts=0 is not allowed"):
        ZeroShot(random_clip, prompts=0)


def test_precision_setting_names_the_allowed_values_and_resolves_auto(monkeypatch):
    from fslib import training
    monkeypatch.delenv("FSLIB_PRECISION")
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'; allowed: auto, fp32, bf16, fp16"):
        training.set_precision("fp8")
    with training.precision_scope("auto"):
        assert training.precision("cuda") == "bf16"
        assert training.precision("cpu") == "fp32"  # the canonical precision on a CPU, whatever it multiplies natively
    with training.precision_scope("fp16"):
        assert training.grad_scaler("cpu").is_enabled() and training.precision("cuda") == "fp16"
    assert not training.grad_scaler("cpu").is_enabled()


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_is_read_from_the_cpu_s_capabilities_and_auto_stays_fp32(monkeypatch, avx512_bf16, amx, expected):
    from fslib import training
    monkeypatch.delenv("FSLIB_PRECISION")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert training.native_bf16("cpu") is expected
    with training.precision_scope("auto"):
        assert training.precision("cpu") == "fp32"


def test_auto_precision_defers_to_the_environment_and_an_explicit_setting_to_nothing(monkeypatch):
    from fslib import training
    monkeypatch.setenv("FSLIB_PRECISION", "fp16")
    with training.precision_scope("auto"):
        assert training.precision("cpu") == "fp16"
    with training.precision_scope("bf16"):
        assert training.precision("cpu") == "bf16"
    monkeypatch.setenv("FSLIB_PRECISION", "fp8")
    with training.precision_scope("auto"), pytest.raises(ValueError, match=r"unknown precision 'fp8' \(from FSLIB_PRECISION\)"):
        training.precision("cpu")


def test_bf16_on_a_cpu_runs_attention_on_the_math_backend():
    """Its flash-attention backward for bf16 is the slow path there (see :func:`fslib.training.autocast`)."""
    from fslib import training

    def kernels(name: str) -> set[str]:
        q = torch.randn(2, 4, 9, 8, requires_grad=True)
        with training.precision_scope(name), torch.profiler.profile() as run:
            with training.autocast("cpu"):
                out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
            out.float().sum().backward()
        return {event.name for event in run.events()}

    assert any("flash" in kernel for kernel in kernels("fp32"))  # torch's default, kept for fp32
    assert not any("flash" in kernel for kernel in kernels("bf16"))


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_training_loop_runs_and_learns_under_reduced_precision(name):
    from fslib import training
    weight = torch.nn.Parameter(torch.zeros(4, 4))
    target = torch.eye(4)
    with training.precision_scope(name):
        losses = training.train([weight], lambda step: ((torch.eye(4) @ weight - target) ** 2).mean(), 30, 0.1,
                                optimizer="adam", cosine=False, progress=False)
    assert losses[-1] < 0.2 * losses[0]


def test_training_loop_frees_last_steps_gradients_before_the_forward_pass():
    """Gradients and the next step's activations never coexist (the memory a ViT-B fine-tune peaks at)."""
    from fslib import training
    weight = torch.nn.Parameter(torch.ones(3))
    seen = []

    def step_loss(step: int) -> torch.Tensor:
        seen.append(weight.grad is None)
        return (weight ** 2).sum()

    training.train([weight], step_loss, 3, 0.1, optimizer="sgd", cosine=False, progress=False)
    assert seen == [True, True, True] and weight.grad is not None


def test_levels_a_trend_runs_over_must_be_three_or_more_before_any_work():
    real = {"scale": "paper-real", "model": "ViT-B-16", "pretrained": "openai"}
    with pytest.raises(ValueError, match=r"datasets=\['dtd', 'eurosat'\] is not allowed: a trend claim runs over "
                                         r"these, which needs at least 3 \(and 6 to be decided\)"):
        params.validate({**real, "datasets": ["dtd", "eurosat"]}, "02_apex")
    with pytest.raises(ValueError, match=r"shift_levels=\[0.0, 1.0\] is not allowed: a trend claim"):
        params.validate({"scale": "lesson", "shift_levels": [0.0, 1.0]}, "01_mamf")
    assert params.validate({"scale": "lesson", "levels": [0.0, 0.2, 0.4]}, "03_smat").levels == [0.0, 0.2, 0.4]
