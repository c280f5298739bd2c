"""Ctrl-C mid-epoch saves a checkpoint; resuming from it gives the uninterrupted run's numbers."""

import os
import signal

import pytest
import torch

from lifted_cli import schemes
from lifted_cli.training import train


ARCH_OVERRIDES = {
    "mlp": ["arch=mlp", "arch.hidden=[16]"],
    "resnet": ["arch=resnet", "arch.width=16", "arch.depth=1"],
    "proxnet": ["arch=proxnet", "arch.hidden=800", "arch.depth=1"],
    "unrolled_pnn": ["arch=unrolled_pnn", "arch.depth=2", "arch.channels=2"],
}


@pytest.mark.parametrize("scheme,arch", [("backprop", "mlp"), ("bregman", "mlp"), ("mac", "resnet"),
                                         ("contrastive", "proxnet"), ("bregman", "unrolled_pnn")])
def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, fake_mnist, compose_train, monkeypatch, scheme, arch):
    cls = schemes.SCHEMES[scheme]
    ov = [f"scheme={scheme}", f"data_root={fake_mnist}", "train_size=64", "test_size=8", "epochs=2", "batch_size=8",
          *ARCH_OVERRIDES[arch], "progress=false", "num_samples=2"]
    full = train(compose_train(ov, output_dir=tmp_path / "full"))

    calls = {"n": 0}
    real_step = cls.step

    def flaky(self, y, x):
        calls["n"] += 1
        if calls["n"] == 11:  # Ctrl-C during epoch 2, batch 3: honoured before batch 4
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, y, x)

    monkeypatch.setattr(cls, "step", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(compose_train(ov, output_dir=tmp_path / "cut"))
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "metrics.json").exists()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["batch"] == 3
    monkeypatch.setattr(cls, "step", real_step)
    resumed = train(compose_train([*ov, f"resume={tmp_path / 'cut'}"], output_dir=tmp_path / "cut"))
    assert resumed["test"] == full["test"]
    assert resumed["train"] == pytest.approx(full["train"], rel=1e-12)


def test_divergence_stops_and_keeps_last_checkpoint(tmp_path, fake_mnist, compose_train):
    from lifted_cli.training import TrainingError

    ov = [f"data_root={fake_mnist}", "train_size=32", "test_size=8", "epochs=3", "batch_size=8",
          "arch.hidden=[16]", "progress=false", "scheme=backprop", "solver=sgd", "solver.lr=1e6", "solver.momentum=0.5"]
    with pytest.raises(TrainingError, match="diverged") as err:
        train(compose_train(ov, output_dir=tmp_path / "d"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "d" / "metrics.json").exists()
