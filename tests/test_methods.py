"""The method contract and the registry: every registered method is an nn.Module whose saved state
reproduces its logits, declares what it can score, and a new method reaches 06 by registering itself."""
import io
from typing import Sequence

import pytest
import torch
import torch.nn.functional as F

from fslib import protocols
from fslib.fewshot import EpisodeSampler
from fslib.methods import Method, create_method, list_methods, register_method, registered
from fslib.methods.registry import unregister_method
from tests.conftest import make_dataset

# the smallest budget each method takes, so that every one fits in a moment
SMALL = dict(epochs=1, steps=2, views=0, batch_size=8)


def small(name: str) -> dict:
    return {option: value for option, value in SMALL.items() if registered(name).accepts(option)}


@pytest.mark.parametrize("name", list_methods())
def test_every_method_is_a_module_whose_saved_state_reproduces_its_logits(random_clip, name):
    support, test = make_dataset(3, 4, seed=1), make_dataset(3, 2, seed=2)
    method = create_method(name, random_clip, **small(name))
    assert isinstance(method, Method) and isinstance(method, torch.nn.Module)
    if method.meta_trains:
        episodes = [EpisodeSampler([make_dataset(4, 6, seed=s)], 3, 2, 2, seed=s).sample() for s in range(2)]
        method.meta_train(episodes)
    expected = method.fit(support).logits(test)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh = create_method(name, random_clip, **small(name))
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    assert fresh.classnames == method.classnames
    assert torch.equal(fresh.logits(test), expected)
    assert torch.equal(fresh(test), expected)  # forward: the fitted classes


def test_a_method_declares_what_it_cannot_score_and_a_driver_asks_first(random_clip):
    support = make_dataset(4, 3)
    probe = create_method("linear probe", random_clip).fit(support)
    assert not probe.scores_unseen_classes and not probe.can_score(["class0", "classX"])
    with pytest.raises(ValueError, match="only score the classes it was fitted on"):
        probe.logits(support, ["class0", "classX"])
    zero_shot = create_method("zero-shot", random_clip).fit(support)
    assert zero_shot.can_score(["classX"])


def test_create_method_names_the_unknown_method_and_option(random_clip):
    with pytest.raises(ValueError, match=r"unknown method 'CoOOp'; registered: zero-shot, linear probe"):
        create_method("CoOOp", random_clip)
    with pytest.raises(ValueError, match=r"LLU takes no option 'epochs'; allowed: .*kappa"):
        create_method("LLU", random_clip, epochs=3)
    with pytest.raises(ValueError, match="already registered"):
        register_method("LLU", Method, paper="again")


def test_meta_training_is_a_declared_step(random_clip):
    with pytest.raises(TypeError, match="LLU does not meta-train"):
        create_method("LLU", random_clip).meta_train([])
    assert {name for name in list_methods() if registered(name).build.meta_trains} == {"MAMF", "FOMAML", "SMAT"}


class NearestCentroid(Method):
    """docs/adding_a_method.md's worked example: each class is the mean of its shots' frozen features (Snell et al.,
    2017, with CLIP's features); a new class, with no shots, falls back to its prompt's text feature."""

    name = "nearest centroid"

    def __init__(self, clip, shrink: float = 0.0):
        super().__init__(clip)
        self.shrink = shrink
        self.register_buffer("centroids", torch.empty(0))

    def fit(self, support):
        self._remember(support)
        features, labels = self.image_features(support), torch.as_tensor(support.labels)
        sums = torch.zeros(support.num_classes, features.shape[1]).index_add_(0, labels, features)
        self.centroids = F.normalize(sums, dim=-1)
        return self

    def logits(self, images, classnames: Sequence[str] | None = None):
        names = list(classnames or self.classnames)
        text = F.normalize(self.clip.model.encode_text(self.clip.tokenizer([self.templates[0].format(n) for n in names])), dim=-1)
        known = {name: i for i, name in enumerate(self.classnames)}
        weights = torch.stack([self.centroids[known[n]] if n in known else text[j] for j, n in enumerate(names)])
        return (self.clip.logit_scale * self.image_features(images) @ weights.T).detach()


@pytest.fixture
def nearest_centroid():
    register_method("nearest centroid", NearestCentroid, paper="Snell et al., 2017", compared=True,
                    parameter_efficient=True)
    yield
    unregister_method("nearest centroid")


def test_a_registered_method_is_one_of_the_comparisons_contenders(random_clip, nearest_centroid):
    from fslib.studies import compare

    contenders = compare.contenders(random_clip, epochs=1, steps=2, views=0)
    assert list(contenders)[-1] == "nearest centroid"
    assert compare.parameter_efficient() == ["linear probe", "Tip-Adapter", "CLIP-Adapter", "LLU", "CoOp", "APEX",
                                             "nearest centroid"]  # a rival of the claims on parameter-efficient methods
    mine = {"nearest centroid": contenders["nearest centroid"]}
    tuning = protocols.choose_hyperparameters(mine, lambda make: 0.0, seed=1, progress=False)
    data = make_dataset(4, 4)
    new = make_dataset(2, 3, seed=5)
    new.classnames[:] = ["classX", "classY"]
    tasks = [protocols.Task("base-to-new", "toy", 2, 1, data, {"base": data, "new": new})]
    results = protocols.run(protocols.at_chosen(mine, tuning), tasks, progress=False)
    assert set(results.part) == {"base", "new"} and results.accuracy.notna().all()


def test_the_launcher_saves_a_method_that_loads_with_the_same_logits(tmp_path, capsys):
    from fslib import launch
    from fslib.data import load_dataset
    from fslib.methods import load_method
    from fslib.models import load_clip

    out = tmp_path / "cite.pt"
    launch.main(["clip-cite", "--dataset", "colors", "--shots", "1", "--epochs", "1", "--out", str(out)])
    summary = capsys.readouterr().out
    assert '"command": "clip-cite"' in summary and '"new":' in summary
    method = load_method(out, load_clip())
    assert method.name == "CLIP-CITE" and method.made_as == ("CLIP-CITE", {"epochs": 1, "lr": 1e-5, "batch_size": 32,
                                                                           "seed": 1, "grad_checkpointing": False})
    test = load_dataset("colors", "test").subset(range(6))
    assert torch.equal(method.logits(test), load_method(out, load_clip()).logits(test))


def test_save_method_asks_for_a_registered_method(random_clip, tmp_path):
    from fslib.methods import ZeroShot, save_method

    with pytest.raises(ValueError, match="was not made by create_method"):
        save_method(ZeroShot(random_clip), tmp_path / "zero.pt")
