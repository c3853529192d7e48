import numpy as np
import pytest

from fslib.world import suite
from fslib.world.corpus import MAX_NAMED_COUNT, NAMED_TEXTURES, NUMBER_WORDS, sample_pretraining_pair
from fslib.world.render import NOVEL_SHAPES, SHAPES, TEXTURES, Obj, Scene, object_mask, render


def test_every_shape_draws_a_distinct_nonempty_mask():
    # the closest pairs (circle / hexagon / the octagon "wug", IoU about 0.9) are fine-grained on
    # purpose; identical masks (IoU near 1) would make a class unlearnable
    masks = {name: object_mask(Obj(name, "red", 20, (0.5, 0.5))) for name in SHAPES}
    assert all(m.sum() > 100 for m in masks.values())
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert overlap < 0.95, f"{a} and {b} look the same (IoU {overlap:.2f})"


def test_render_is_deterministic_per_seed_and_checks_style():
    scene = Scene((Obj("star", "blue", 15, (0.5, 0.5), "striped"),), "noisy")
    a, b = render(scene, np.random.default_rng(3)), render(scene, np.random.default_rng(3))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown style 'watercolour'; allowed: flat, shaded"):
        render(Scene(scene.objects, "watercolour"), np.random.default_rng(0))


def test_pretraining_corpus_never_shows_held_out_concepts():
    rng = np.random.default_rng(0)
    pairs = [sample_pretraining_pair(rng) for _ in range(3000)]
    words = set(" ".join(caption for _, caption in pairs).split())
    assert words.isdisjoint(NOVEL_SHAPES)
    assert words.isdisjoint(set(TEXTURES) - set(NAMED_TEXTURES))
    assert words.isdisjoint(NUMBER_WORDS[MAX_NAMED_COUNT:])
    assert {scene.style for scene, _ in pairs} == {"flat", "shaded", "noisy"}
    assert not {o.shape for scene, _ in pairs for o in scene.objects} & set(NOVEL_SHAPES)
    assert len(words & set(NUMBER_WORDS[:MAX_NAMED_COUNT])) == MAX_NAMED_COUNT


def test_suite_datasets_are_deterministic_and_splits_independent():
    first = suite.load_world_dataset("counting", "train")
    suite._build.cache_clear()
    again = suite.load_world_dataset("counting", "train")
    assert np.array_equal(first.images, again.images) and first.fingerprint() == again.fingerprint()
    test = suite.load_world_dataset("counting", "test")
    assert not np.array_equal(first.images[:5], test.images[:5])


@pytest.mark.parametrize("name", list(suite.WORLD_DATASETS))
def test_suite_dataset_shapes(name):
    data = suite.load_world_dataset(name, "train")
    assert data.images.shape[1:] == (64, 64, 3) and data.num_classes >= 9
    assert np.array_equal(np.bincount(data.labels), [suite.PER_CLASS["train"]] * data.num_classes)
    assert data.domain in ("id", "ood")


def test_suite_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown embedded dataset 'cats'; allowed: colors, shapes"):
        suite.load_world_dataset("cats")
    with pytest.raises(ValueError, match="unknown split 'dev'; allowed: train, val, test"):
        suite.load_world_dataset("shapes", "dev")


def test_a_dial_draws_the_same_scenes_at_every_level_and_moves_only_its_knob():
    from fslib.data import load_dataset
    from fslib.world.dials import DIALS, load_dial_dataset

    dial = DIALS["sketch_shift"]
    assert len(dial.levels) >= 6 and list(dial.levels) == sorted(dial.levels)
    levels = [load_dataset(name, "val") for name in dial.datasets().values()]
    assert all(d.classnames == levels[0].classnames and (d.labels == levels[0].labels).all() for d in levels)
    assert levels[0].classnames == list(suite.WORLD_DATASETS["shapes"].classnames)
    # the knob: each level's images lie farther (in pixels) from the pretraining-style level than the one before,
    # and the last level is the pencil-sketch style of shapes_sketch (light paper, dark outlines)
    start = levels[0].images.astype(np.float32)
    distances = [float(np.abs(d.images.astype(np.float32) - start).mean()) for d in levels]
    assert distances[0] == 0 and all(a < b for a, b in zip(distances, distances[1:]))
    assert levels[-1].images.mean() > 200 and load_dataset("shapes_sketch", "val").images.mean() > 200
    with pytest.raises(ValueError, match="unknown dataset 'sketch_shift@0.3'; allowed: .*sketch_shift@0.2, sketch_sh"):
        load_dataset("sketch_shift@0.3")
    with pytest.raises(ValueError, match="sketch_shift has no level '0.3'; allowed: 0, 0.2, 0.4, 0.6, 0.8, 1"):
        load_dial_dataset("sketch_shift@0.3")
    with pytest.raises(ValueError, match="sketch_shift has no level 0.3; allowed: 0, 0.2"):
        dial.dataset(0.3)
    with pytest.raises(ValueError, match="unknown dial 'fog'; allowed: sketch_shift, class_distance"):
        load_dial_dataset("fog@1")


def test_the_class_distance_dial_keeps_its_base_classes_and_moves_its_new_classes_away_in_text_space():
    """What the dial stages: the same base classes and base images at every level, and new classes whose mean
    text distance to the base classes (APEX's d_avg, from the embedded model) grows strictly with the level; the
    committed bins are what distance_bins gives from the model's text features."""
    from fslib.data import load_dataset
    from fslib.methods.apex import class_distances
    from fslib.models import load_clip, zero_shot_classifier
    from fslib.world.dials import DIALS, DISTANCE_BASE, DISTANCE_NEW, DISTANCE_TEMPLATE, distance_bins
    from fslib.world.render import COLORS, SEEN_SHAPES

    dial = DIALS["class_distance"]
    assert len(dial.levels) >= 6
    levels = [load_dataset(name, "val") for name in dial.datasets().values()]
    half = len(levels[0].labels) // 2
    for data, new in zip(levels, DISTANCE_NEW):
        assert data.classnames == [*DISTANCE_BASE, *new]
        assert (data.images[:half] == levels[0].images[:half]).all() and (data.labels == levels[0].labels).all()
    clip = load_clip()
    text = lambda names: zero_shot_classifier(clip, list(names), [DISTANCE_TEMPLATE])
    pool = [f"{c} {s}" for c in COLORS for s in SEEN_SHAPES if f"{c} {s}" not in DISTANCE_BASE]
    d_avg, _ = class_distances(text(DISTANCE_BASE), text(pool))
    assert distance_bins(pool, d_avg.tolist()) == list(DISTANCE_NEW)
    means = [float(class_distances(text(DISTANCE_BASE), text(new))[0].mean()) for new in DISTANCE_NEW]
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_distance_bins_cut_equal_count_bins_nearest_first_and_sample_each_evenly():
    from fslib.world.dials import distance_bins

    names = [f"c{i}" for i in range(12)]
    d_avg = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0, 1.0, 1.1]  # c9 nearest, c11 farthest
    assert distance_bins(names, d_avg, levels=3, per_level=2) == [("c9", "c3"), ("c7", "c4"), ("c6", "c11")]


def test_the_sketch_dial_moves_zero_shot_accuracy_from_known_to_unknown():
    """What the dial stages: the tiny CLIP recognises level 0 (its pretraining styles) and fails at level 1,
    falling across the levels (Spearman's rho over levels, on the validation images)."""
    from scipy import stats

    from fslib.models import load_clip
    from fslib.studies.zero_shot import zero_shot_table
    from fslib.world.dials import DIALS

    dial = DIALS["sketch_shift"]
    clip = load_clip()
    accuracy = [float(zero_shot_table(clip, [name], split="val").zero_shot.iloc[0]) for name in dial.datasets().values()]
    assert accuracy[0] > 85 and accuracy[-1] < 35, accuracy
    assert stats.spearmanr(dial.levels, accuracy).statistic <= -0.9, accuracy


def test_the_spurious_cue_dial_ties_colour_to_class_in_training_images_only(monkeypatch):
    from fslib.data import load_dataset
    from fslib.world import dials
    from fslib.world.render import COLORS

    drawn, real = [], dials.single_object_scene

    def spy(rng, shape, color, *args, **kwargs):
        drawn.append(color)
        return real(rng, shape, color, *args, **kwargs)

    monkeypatch.setattr(dials, "single_object_scene", spy)

    def cued_share(level: float, split: str) -> float:
        drawn.clear()
        draw, rng = dials.DIALS["spurious_cue"].level(level).draw, np.random.default_rng(0)
        labels = np.arange(200) % 10
        for label in labels:
            draw(int(label), rng, split)
        return float(np.mean([color == list(COLORS)[label] for color, label in zip(drawn, labels)]))

    assert cued_share(1.0, "train") == 1.0
    assert 0.5 < cued_share(0.6, "train") < 0.7 and cued_share(0.0, "train") < 0.2  # a random colour may match
    assert cued_share(1.0, "val") < 0.2 and cued_share(1.0, "test") < 0.2
    for split in ("val", "test"):  # the cue lives in the training images only: other splits equal at every level
        assert np.array_equal(load_dataset("spurious_cue@0", split).images, load_dataset("spurious_cue@1", split).images)
