import numpy as np
import pytest
from PIL import Image

from fslib.data import ImageDataset, load_dataset, load_image_folder, split_per_class
from fslib.fewshot import EpisodeSampler, base_new_classes, base_new_split, few_shot, few_shot_indices
from tests.conftest import make_dataset


def test_few_shot_is_reproducible_per_seed_and_differs_across_seeds():
    labels = np.repeat(np.arange(5), 20)
    a, b, c = (few_shot_indices(labels, 4, seed) for seed in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(np.bincount(labels[a]), [4] * 5)


def test_few_shot_records_its_indices_in_the_cache_identity():
    dataset = make_dataset(per_class=10)
    assert few_shot(dataset, 2, 1).fingerprint() == few_shot(dataset, 2, 1).fingerprint()
    assert few_shot(dataset, 2, 1).fingerprint() != few_shot(dataset, 2, 2).fingerprint()


@pytest.mark.parametrize("shots", [0, -3])
def test_few_shot_rejects_non_positive_shots(shots):
    with pytest.raises(ValueError, match=f"shots must be >= 1, got {shots}"):
        few_shot_indices(np.zeros(10, int), shots, 1)


def test_few_shot_names_the_class_that_is_too_small():
    with pytest.raises(ValueError, match="class 1 has 2 images, fewer than shots=3"):
        few_shot_indices(np.array([0, 0, 0, 1, 1]), 3, 1)


def test_base_new_split_takes_first_half_of_sorted_labels():
    assert base_new_classes(5) == ([0, 1, 2], [3, 4])  # odd C: base gets the extra class, as in CoOp
    dataset = ImageDataset("t", "test", ["ant", "bee", "cat", "dog"], np.array([3, 0, 2, 1, 0]),
                           np.zeros((5, 2, 2, 3), np.uint8), ["{}"])
    base, new = base_new_split(dataset)
    assert base.classnames == ["ant", "bee"] and new.classnames == ["cat", "dog"]
    assert base.labels.tolist() == [0, 1, 0] and new.labels.tolist() == [1, 0]


def test_episode_sampler_shapes_and_relabelling():
    sampler = EpisodeSampler([make_dataset(6, 10)], n_way=3, k_shot=2, q_query=4, seed=0)
    episode = sampler.sample()
    assert len(episode.support) == 6 and len(episode.query) == 12
    assert sorted(set(episode.support.labels)) == [0, 1, 2]
    assert episode.support.classnames == [f"class{c}" for c in episode.classes]
    again = EpisodeSampler([make_dataset(6, 10)], 3, 2, 4, seed=0).sample()
    assert again.classes == episode.classes


def test_episode_sampler_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"'toy' has only 0 classes with at least k_shot\+q_query=11 images, fewer than n_way=3"):
        EpisodeSampler([make_dataset(6, 10)], n_way=3, k_shot=5, q_query=6)
    with pytest.raises(ValueError, match="n_way must be >= 2, got 1"):
        EpisodeSampler([make_dataset()], n_way=1, k_shot=1, q_query=1)
    with pytest.raises(ValueError, match="pool is empty"):
        EpisodeSampler([], n_way=2, k_shot=1, q_query=1)


def _write_images(folder, count, colour):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 8), colour).save(folder / f"img_{i:02d}.png")


def test_image_folder_loader_on_generated_files(tmp_path):
    _write_images(tmp_path / "birds" / "001.Black_footed_Albatross", 10, (255, 0, 0))
    _write_images(tmp_path / "birds" / "002.Laysan_Albatross", 10, (0, 0, 255))
    train = load_image_folder(tmp_path / "birds", "train")
    test = load_image_folder(tmp_path / "birds", "test")
    assert train.classnames == ["Black footed Albatross", "Laysan Albatross"]
    assert len(train) == 10 and len(test) == 6 and set(train.images).isdisjoint(test.images)
    assert train.image(0).getpixel((0, 0)) == (255, 0, 0)
    assert load_dataset(str(tmp_path / "birds"), "val").labels.tolist() == [0, 0, 1, 1]


def test_image_folder_with_split_folders(tmp_path):
    _write_images(tmp_path / "mini" / "train" / "dog", 3, (1, 2, 3))
    _write_images(tmp_path / "mini" / "test" / "dog", 2, (1, 2, 3))
    assert len(load_image_folder(tmp_path / "mini", "train")) == 3
    assert len(load_image_folder(tmp_path / "mini", "test")) == 2


def test_unknown_dataset_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown dataset 'shapez'; allowed: colors, shapes,.*oxford_pets"):
        load_dataset("shapez")


def test_split_per_class_partitions_each_class():
    labels = np.repeat([0, 1], 10)
    parts = [split_per_class(labels, s, {"train": 0.5, "val": 0.2, "test": 0.3}) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [10, 4, 6]
    assert len(np.unique(np.concatenate(parts))) == 20


def test_fixed_test_sample_is_balanced_the_same_for_every_caller_and_optional():
    from fslib.fewshot import fixed_test_sample

    data = make_dataset(3, 10)
    sample = fixed_test_sample(data, 4)
    assert np.array_equal(np.bincount(sample.labels), [4, 4, 4])
    assert np.array_equal(sample.parent_indices, fixed_test_sample(data, 4).parent_indices)  # the same for every caller
    assert fixed_test_sample(data, None) is data and fixed_test_sample(data, 0) is data and fixed_test_sample(data, 10) is data
