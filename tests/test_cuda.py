"""The CUDA paths (device=cuda / auto on a GPU machine). Skipped where no GPU is present (CI); run them
on a GPU workstation with `make test ARGS=tests/test_cuda.py`."""

import json
import math
import subprocess
import sys

import pytest
import torch

from lifted_cli.commands.train import train
from lifted_cli.inversion import LiftedInversion, build_regularizer
from lifted_cli.nets.architectures import MLP
from lifted_cli.runs import network_from_checkpoint
from tests.conftest import INVALID, TRAIN_ARCHS as ARCH

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# every valid scheme x architecture pair (fenchel needs an invertible activation: not proxnet / unrolled_pnn)
COMBOS = [(s, a) for s in ("backprop", "bregman", "mac", "fenchel", "contrastive") for a in ARCH if (s, a) not in INVALID]


def _tiny(fake_mnist, scheme, arch, device, epochs=2):
    return [f"scheme={scheme}", f"data_root={fake_mnist}", "train_size=48", "test_size=8", f"epochs={epochs}",
            "batch_size=16", *ARCH[arch], "progress=false", "num_samples=2", f"device={device}"]


@pytest.mark.parametrize("scheme,arch", COMBOS)
def test_train_on_cuda_and_use_the_checkpoint_on_cpu(tmp_path, fake_mnist, compose_train, scheme, arch):
    m = train(compose_train(_tiny(fake_mnist, scheme, arch, "cuda"), output_dir=tmp_path / "gpu"))
    assert m["device"].startswith("cuda") and m["status"] == "finished"
    assert math.isfinite(m["test"]["psnr"]["mean"]) and math.isfinite(m["train"]["loss"])
    # the checkpoint is read on a machine without a GPU: every tensor lands on the CPU
    model, ckpt = network_from_checkpoint(tmp_path / "gpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    x = torch.rand(3, 784)
    gpu_model = model.to("cuda")
    with torch.no_grad():
        on_gpu = gpu_model(x.cuda()).cpu()
        on_cpu = model.to("cpu")(x)
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4)


@pytest.mark.parametrize("scheme,arch", [("backprop", "mlp"), ("bregman", "mlp"), ("mac", "resnet"),
                                         ("contrastive", "proxnet"), ("bregman", "unrolled_pnn")])
def test_cuda_run_resumes_on_cpu(tmp_path, fake_mnist, compose_train, scheme, arch):
    """device may change on resume: a run started on the GPU finishes on the CPU."""
    train(compose_train(_tiny(fake_mnist, scheme, arch, "cuda", epochs=1), output_dir=tmp_path / "run"))
    resumed = train(compose_train([*_tiny(fake_mnist, scheme, arch, "cpu", epochs=2), f"resume={tmp_path / 'run'}"],
                                  output_dir=tmp_path / "run"))
    assert resumed["device"] == "cpu" and resumed["epochs"] == 2 and math.isfinite(resumed["test"]["psnr"]["mean"])


def _random_perceptron(side=16, m=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = MLP([side * side, m], ["relu"])
    with torch.no_grad():
        model.blocks[0].linear.weight.copy_(torch.randn(m, side * side, generator=g))
        model.blocks[0].linear.bias.zero_()
    truth = torch.zeros(2, side, side)
    truth[0, 3:12, 4:9] = 1.0
    truth[1, 5:14, 2:14] = 0.6
    return model, truth.reshape(2, -1)


@pytest.mark.parametrize("output", ["clamped", "free"])
def test_lifted_inversion_on_cuda_matches_cpu(output):
    model, truth = _random_perceptron()
    f = torch.relu(model(truth)).detach()
    results = []
    for dev in ("cpu", "cuda"):
        inv = LiftedInversion(model.to(dev), f.to(dev), build_regularizer("tv", 16), 0.01, init=torch.full_like(truth, 0.5).to(dev),
                              box=True, output=output, data_weight=1.0)
        for _ in range(300):
            inv.step()
        results.append(inv.u.detach().cpu())
    psnr = [float(-10 * torch.log10((u - truth).pow(2).mean())) for u in results]
    assert psnr[0] > 15 and abs(psnr[0] - psnr[1]) < 0.1, psnr


@pytest.mark.parametrize("method", ["lifted_bregman", "backprop"])
def test_invert_command_on_cuda(tmp_path, fake_mnist, method):
    out = tmp_path / "inv"
    r = subprocess.run([sys.executable, "-m", "lifted_cli", "invert", "network=random_perceptron",
                        "perceptron.out_dim=128", "perceptron.image_size=16", f"method={method}", "num_images=2",
                        "iterations=50", "delta=0.05", "device=cuda", "progress=false", f"hydra.run.dir={out}",
                        f"data_root={fake_mnist}"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["device"].startswith("cuda") and math.isfinite(m["recovered"]["psnr"]["mean"])


@pytest.mark.parametrize("extra", [["solver.warm_start=persistent"], ["solver.layer_order=red_black"],
                                   ["solver.warm_start=persistent", "solver=bcd"]])
def test_persistent_and_red_black_runs_on_cuda_resume_on_cpu(tmp_path, fake_mnist, compose_train, extra):
    """The stored auxiliary variables live on the GPU, travel in the checkpoint and continue on the CPU."""
    ov = _tiny(fake_mnist, "bregman", "mlp", "cuda", epochs=1) + extra
    first = train(compose_train(ov, output_dir=tmp_path / "run"))
    assert first["device"].startswith("cuda") and math.isfinite(first["test"]["psnr"]["mean"])
    resumed = train(compose_train([*_tiny(fake_mnist, "bregman", "mlp", "cpu", epochs=2), *extra, f"resume={tmp_path / 'run'}"],
                                  output_dir=tmp_path / "run"))
    assert resumed["device"] == "cpu" and math.isfinite(resumed["test"]["psnr"]["mean"])


#: overrides that give each architecture a run of equal blocks (with TRAIN_ARCHS)
STACKING = {"mlp": ["arch.depth=3", "arch.width=16"], "resnet": ["arch.depth=3"], "proxnet": ["arch.depth=3"],
            "unrolled_pnn": ["arch.depth=3"]}


@pytest.mark.parametrize("warm_start", ["forward", "persistent"])
@pytest.mark.parametrize("arch", list(STACKING))
def test_stacked_runs_on_cuda_follow_the_per_layer_loop(tmp_path, fake_mnist, compose_train, arch, warm_start):
    """Stacked blocks on the GPU (vmapped kernels, batched Cholesky, stored auxiliaries on the device)
    end where the per-layer loop ends, and the run records CUDA's peak memory and its step time."""
    runs = {}
    for stacked in ("false", "true"):
        ov = [*_tiny(fake_mnist, "bregman", arch, "cuda", epochs=1), *STACKING[arch], "solver.layer_order=red_black",
              f"solver.warm_start={warm_start}", f"solver.stacked={stacked}"]
        runs[stacked] = train(compose_train(ov, output_dir=tmp_path / stacked))
    assert runs["true"]["stacks"] and not runs["false"]["stacks"]
    assert runs["true"]["test"]["psnr"]["mean"] == pytest.approx(runs["false"]["test"]["psnr"]["mean"], abs=0.05)
    assert runs["true"]["peak_memory_kind"] == "cuda_max_allocated" and runs["true"]["peak_memory_mb"] > 0
    assert math.isfinite(runs["true"]["step_ms"]) and runs["true"]["steps_timed"] == 3
