"""Student networks and the evaluation loop: cross-architecture models and per-epoch re-sampling."""

import pytest
import torch

from d3codec.evaluation import students as ev
from d3codec.evaluation.students import StudentConfig, train_student, train_students
from d3codec.nn.models import MODELS, build_model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_student_model_maps_small_images_to_class_logits(name, shape):
    net = build_model(name, shape[0], 7, shape[1])
    assert net(torch.randn(2, *shape)).shape == (2, 7)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("vgg", 1, 3, 28)


def test_an_mlp_student_learns_the_tiny_classes(tiny_real):
    x, y = tiny_real.images_at(torch.arange(60)), tiny_real.train_targets
    result = train_students("mlp", x, y, tiny_real, runs=1, config=StudentConfig(model="mlp", epochs=30, dsa=False))
    assert result.accuracies[0] > 0.9  # chance is 1/3


def test_resampling_gives_every_later_epoch_fresh_images_of_the_same_kind(tiny_real):
    x, y = tiny_real.images_at(torch.arange(60)), tiny_real.train_targets
    test = ev.test_split(tiny_real)
    calls = []

    def resample(epoch):
        calls.append(epoch)
        return x.flip(0), y.flip(0)

    config = StudentConfig(epochs=4, batch_size=32)
    train_student(x, y, 3, tiny_real.mean, tiny_real.std, test, config, resample=resample)
    assert calls == [1, 2, 3]
    with pytest.raises(ValueError, match="same kind of targets"):
        train_student(
            x,
            y,
            3,
            tiny_real.mean,
            tiny_real.std,
            test,
            config,
            resample=lambda epoch: (x, torch.nn.functional.one_hot(y, 3).float()),
        )
    runs = []
    train_students(
        "r",
        x,
        y,
        tiny_real,
        runs=2,
        config=StudentConfig(epochs=2),
        resample=lambda run, epoch: (runs.append((run, epoch)), (x, y))[1],
    )
    assert runs == [(0, 1), (1, 1)]


def test_a_killed_student_goes_on_from_its_checkpoint_and_ends_as_an_uninterrupted_one(
    tiny_real, tmp_path, monkeypatch
):
    from d3codec.errors import D3Error

    x, y = tiny_real.images_at(torch.arange(60)), tiny_real.train_targets
    test, config = ev.test_split(tiny_real), StudentConfig(epochs=6, batch_size=16, compile="off")
    finals = []  # each tested student's weights
    tested = ev.test_accuracy
    monkeypatch.setattr(
        ev,
        "test_accuracy",
        lambda net, *a: (finals.append({k: v.clone() for k, v in net.state_dict().items()}), tested(net, *a))[1],
    )
    monkeypatch.setattr(ev, "STUDENT_CHECKPOINT_SECONDS", 0.0)  # a save after every epoch

    class Killed(Exception):
        pass

    def killed_at_4(epoch):
        if epoch == 4:
            raise Killed
        return x, y

    ckpt = tmp_path / "s.ckpt.safetensors"
    whole = train_student(x, y, 3, tiny_real.mean, tiny_real.std, test, config, seed=3, resample=lambda e: (x, y))
    with pytest.raises(Killed):
        train_student(
            x, y, 3, tiny_real.mean, tiny_real.std, test, config, seed=3, resample=killed_at_4, checkpoint=ckpt
        )
    assert ckpt.is_file()  # epochs 1 to 4 done and saved
    with pytest.raises(D3Error, match="other data, options or seed"):
        train_student(x, y, 3, tiny_real.mean, tiny_real.std, test, config, seed=4, checkpoint=ckpt)
    calls = []
    resumed = train_student(
        x,
        y,
        3,
        tiny_real.mean,
        tiny_real.std,
        test,
        config,
        seed=3,
        resample=lambda e: (calls.append(e), (x, y))[1],
        checkpoint=ckpt,
    )
    assert calls == [4, 5]  # the learning rate's drop at epoch 3 came back with the optimiser
    assert resumed[0] == whole[0] and not ckpt.exists()
    assert all(torch.equal(finals[0][k], finals[-1][k]) for k in finals[0])


def test_the_full_data_accuracy_of_the_ranking_is_the_measured_one():
    """d3codec.evaluation.ranking keeps what benchmarks/full_data.py measured (benchmarks/full-data.json), command
    and all."""
    import json
    from pathlib import Path

    from d3codec.evaluation.ranking import FULL_DATA_ACCURACY

    measured = json.loads((Path(__file__).parent.parent / "benchmarks" / "full-data.json").read_text())
    assert {(r["dataset"], r["model"]): r["accuracy"] for r in measured} == {
        key: accuracy for key, (accuracy, _) in FULL_DATA_ACCURACY.items()
    }
    for r in measured:
        assert r["command"] in FULL_DATA_ACCURACY[r["dataset"], r["model"]][1]
