"""Training over torch.distributed (``parallel=data|layer``): refusals before any process starts, and,
with the gloo backend and 2 processes on the CPU, data-parallel = one process and layer-parallel =
one-process Jacobi (weights and statistics to float tolerance), one results folder under torchrun,
resumption with another number of processes, and a killed rank ending the run with one line.

The runs are real: ``lifted train`` in a subprocess starts its ranks with torch's elastic launcher
(or torchrun does), each run with a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import LIFTED, assert_same_run, run_lifted

TINY = ["train_size=40", "test_size=8", "batch_size=16", "num_samples=0", "progress=false"]


def env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def lifted(args, cwd, check=True, timeout=240):
    proc = subprocess.run([*LIFTED, *args], cwd=cwd, capture_output=True, text=True, env=env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fake_mnist):
    """runs(*overrides) -> the folder of a tiny ``lifted train`` run, made once per module: with
    ``parallel=...`` through the console script in a subprocess (its ranks are processes of their own),
    else in this process."""
    from lifted_cli.cli import main

    root = tmp_path_factory.mktemp("parallel")
    cache: dict = {}

    def get(*overrides) -> Path:
        if overrides not in cache:
            folder = root / f"run{len(cache)}"
            args = ["train", f"data_root={fake_mnist}", *TINY, f"hydra.run.dir={folder}", *overrides]
            if any(o.startswith("parallel=") for o in overrides):
                lifted(args, cwd=root)
            else:
                assert main(args) == 0
            cache[overrides] = folder
        return cache[overrides]

    return get


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def weights(folder: Path) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["model"]


# ------------------------------------------------------------------------ refused before start
@pytest.mark.parametrize("overrides, fragment", [
    (["parallel.nproc=2"], "parallel.nproc=2: needs parallel=data or parallel=layer"),
    (["parallel=data", "parallel.backend=nccl", "device=cpu"], "NCCL needs CUDA"),
    (["parallel=data", "parallel.nproc=4096"], "at most one process per core"),
    (["parallel=data", "parallel.nproc=2", "batch_size=1"], "batch_size=1"),
    (["parallel=data", "parallel.backend=mpi"], "parallel.backend=mpi"),
    (["parallel=layer", "scheme=backprop"], "back-propagation has no layer problems"),
    (["parallel=layer", "solver.layer_order=gauss_seidel"], "layer-parallel needs solver.layer_order=jacobi"),
    (["parallel=layer", "solver.layer_order=red_black"], "layer-parallel needs solver.layer_order=jacobi"),
    (["parallel.name=mesh"], "parallel.name=mesh: allowed: none, data, layer, grid"),
    (["parallel=data", "+parallel.layer_ranks=2"], "parallel.layer_ranks=2: is the layer ranges of parallel=grid"),
    (["parallel=grid", "parallel.layer_ranks=null"], "parallel=grid needs the number of layer ranges"),
    (["parallel=grid", "parallel.nproc=2", "parallel.layer_ranks=3", "solver.layer_order=jacobi"],
     "parallel.layer_ranks=3: must divide the 2 processes"),
    (["parallel=grid", "parallel.nproc=2", "parallel.layer_ranks=1", "batch_size=1", "solver.layer_order=jacobi"],
     "processes sharing out a batch (2)"),
    (["parallel=grid", "scheme=backprop"], "back-propagation has no layer problems"),
    (["parallel=grid", "solver.layer_order=red_black"], "layer-parallel needs solver.layer_order=jacobi"),
    (["parallel=data", "solver.warm_start=pipelined"], "solver.warm_start=pipelined: runs in one process"),
    (["parallel=layer", "solver.layer_order=jacobi", "solver.warm_start=pipelined"], "solver.warm_start=pipelined"),
])
def test_bad_combinations_are_refused_in_one_line(compose_train, tmp_path, overrides, fragment):
    from lifted_cli.commands.train import prevalidate
    from lifted_cli.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        prevalidate(compose_train(["device=cpu", *overrides], output_dir=tmp_path))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_more_layer_ranks_than_layers_is_refused(compose_train, tmp_path, monkeypatch):
    from lifted_cli import parallel
    from lifted_cli.commands.train import prevalidate
    from lifted_cli.errors import ConfigError

    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 8)
    cfg = compose_train(["device=cpu", "parallel=layer", "parallel.nproc=3", "solver.layer_order=jacobi",
                         "arch.hidden=[16]"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="this network has 2; use at most 2 processes"):
        prevalidate(cfg)


def test_more_layer_ranges_than_layers_is_refused_on_a_grid(compose_train, tmp_path, monkeypatch):
    from lifted_cli import parallel
    from lifted_cli.commands.train import prevalidate
    from lifted_cli.errors import ConfigError

    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 8)
    cfg = compose_train(["device=cpu", "parallel=grid", "parallel.nproc=6", "parallel.layer_ranks=3",
                         "solver.layer_order=jacobi", "arch.hidden=[16]"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="parallel.layer_ranks=3: .* this network has 2; use at most 2 layer ranges"):
        prevalidate(cfg)


def test_torchrun_world_and_nproc_must_agree(compose_train, tmp_path, monkeypatch):
    from lifted_cli.commands.train import validate
    from lifted_cli.errors import ConfigError

    for key, value in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="started by torchrun with a world of 2"):
        validate(compose_train(["device=cpu", "parallel=data", "parallel.nproc=3"], output_dir=tmp_path))


def test_partition_is_contiguous_and_balances_the_cost():
    from lifted_cli.parallel import partition

    assert partition([1] * 8, 4) == [(1, 2), (3, 4), (5, 6), (7, 8)]
    assert partition([1, 1, 1], 3) == [(1, 1), (2, 2), (3, 3)]
    # heavy first and last layers (784-wide) against light hidden ones: the largest share is least
    ranges = partition([3, 1, 1, 1, 1, 1, 1, 3], 2)
    assert ranges == [(1, 4), (5, 8)]
    costs = [5, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    ranges = partition(costs, 3)
    assert [a for a, _ in ranges] == [1] + [b + 1 for _, b in ranges[:-1]] and ranges[-1][1] == len(costs)
    assert max(sum(costs[a - 1:b]) for a, b in ranges) == 5


# ------------------------------------------------------------------------ same iterates (gloo)
DATA_CASES = {
    # 33 samples: the last batch has one, so one rank has none
    "isgm_persistent": ["arch.depth=3", "arch.width=24", "solver.warm_start=persistent", "epochs=2", "train_size=33"],
    "isgm_jacobi_stacked": ["arch.depth=3", "arch.width=24", "solver.layer_order=jacobi", "epochs=1"],
    # residual blocks: the exact steps in (W, b) and in V gather four row blocks each
    "isgm_resnet_gauss_seidel": ["arch=resnet", "arch.width=16", "arch.depth=3", "epochs=1"],
    # unrolled blocks: the Gauss-Newton step by conjugate gradients, its sums and its line search over both ranks
    "isgm_unrolled_cg": ["arch=unrolled_pnn", "arch.depth=2", "arch.channels=2", "arch.kernel=3", "solver.cg_iters=2",
                         "epochs=1"],
    "bcd_resnet": ["arch=resnet", "arch.width=16", "arch.depth=3", "solver=bcd", "solver.layer_order=jacobi", "epochs=1"],
    # sgd: Adam's normalisation would turn a rounding-level gradient into a step of lr in either run
    "backprop_ddp": ["scheme=backprop", "solver=sgd", "arch.hidden=[16]", "epochs=1", "train_size=33"],
    # another source and task: 16 x 16 natural patches, deblurred (every rank cuts the same patches)
    "isgm_natural_patches_deblur": ["source=natural_patches", "source.side=16", "source.stride=24", "task=deblur",
                                    "arch.depth=2", "arch.width=24", "epochs=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_parallel_equals_one_process(runs, case):
    one = runs(*DATA_CASES[case])
    two = runs(*DATA_CASES[case], "parallel=data", "parallel.nproc=2")
    m = metrics(two)
    assert m["parallel"]["mode"] == "data" and m["parallel"]["world_size"] == 2 and m["parallel"]["backend"] == "gloo"
    assert m["parallel"]["comm_ms"] >= 0
    ranks = m["parallel"]["ranks"]  # every rank's own medians, gathered to rank 0
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["step_ms"] > 0 and 0 <= r["comm_ms"] <= r["step_ms"]
        # a median of per-step differences, so not step_ms - comm_ms (a difference of medians): timing
        # noise on a busy machine separates the two; step_medians_ms is checked exactly below
        assert 0 <= r["compute_ms"]
    assert_same_run(one, two)


def test_step_medians_are_medians_of_each_series_and_of_the_differences():
    from lifted_cli.parallel import step_medians_ms

    steps, comms = [0.010, 0.002, 0.030, 0.004], [0.001, 0.001, 0.025, 0.003]
    step, comm, work = step_medians_ms([0.5] + steps, comms)  # the series align at their ends: the extra first step is dropped
    assert step == pytest.approx(7.0) and comm == pytest.approx(2.0)
    assert work == pytest.approx(3.0)  # differences 9, 1, 5, 1 ms: median 3, while 7 - 2 would say 5
    assert all(v != v for v in step_medians_ms([], []))


LAYER_CASES = {
    "mlp": ["arch.depth=4", "arch.width=24", "solver.layer_order=jacobi", "epochs=1"],
    "resnet_persistent": ["arch=resnet", "arch.width=16", "arch.depth=3", "solver.layer_order=jacobi",
                          "solver.warm_start=persistent", "epochs=2"],
    "natural_patches_inpaint": ["source=natural_patches", "source.side=12", "source.stride=24", "task=inpaint",
                                "arch.depth=3", "arch.width=16", "solver.layer_order=jacobi", "epochs=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_parallel_equals_one_process_jacobi(runs, tmp_path, case):
    one = runs(*LAYER_CASES[case])
    two = runs(*LAYER_CASES[case], "parallel=layer", "parallel.nproc=2")
    m = metrics(two)
    assert m["parallel"]["grid"] == [1, 2]
    assert_same_run(one, two)
    # its checkpoint holds one solver state per rank: it resumes on as many processes, and only so
    before = {p.name: p.read_bytes() for p in two.iterdir() if p.is_file()}
    proc = lifted(["train", f"resume={two}", "epochs=3", "parallel.nproc=1"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "resumes on as many" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in two.iterdir() if p.is_file()} == before


def torchrun(nproc: int, args: list, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``lifted`` under torchrun on this machine (torchrun may start more processes than cores, which
    lifted's own launcher refuses: how a 2 x 2 grid runs on 2 cores)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "lifted_cli",
           *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_data_by_layer_grid_equals_one_process_jacobi_and_resumes_on_its_grid(runs, tmp_path, fake_mnist):
    """A 2 x 2 grid (two layer ranges, each shared out over two processes) with persistent
    auxiliaries and a last batch of one sample (one row of the grid has none): one epoch, then a
    resumption to two, equals two epochs of one process."""
    case = ["arch=resnet", "arch.width=16", "arch.depth=3", "solver.layer_order=jacobi", "solver.warm_start=persistent",
            "train_size=33"]
    straight = runs(*case, "epochs=2")
    folder = tmp_path / "grid"
    torchrun(4, ["train", f"data_root={fake_mnist}", *TINY, *case, "epochs=1", "parallel=grid", "parallel.layer_ranks=2",
                 f"hydra.run.dir={folder}"], cwd=tmp_path)
    m = metrics(folder)
    assert m["parallel"]["grid"] == [2, 2] and m["parallel"]["world_size"] == 4
    # another grid is refused in one line before anything changes
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    proc = lifted(["train", f"resume={folder}", "epochs=2", "parallel.nproc=2"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "resumes on the same grid" in proc.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    torchrun(4, ["train", f"resume={folder}", "epochs=2"], cwd=tmp_path)
    assert_same_run(straight, folder)


@pytest.mark.slow
def test_data_parallel_resumes_on_another_number_of_processes(runs, tmp_path):
    """Its checkpoint is a single process's (the persistent auxiliaries gathered whole)."""
    case = DATA_CASES["isgm_persistent"]
    straight = runs(*case)  # two epochs in one process
    split = runs(*[o for o in case if o != "epochs=2"], "epochs=1", "parallel=data", "parallel.nproc=2")
    lifted(["train", f"resume={split}", "epochs=2", "parallel.nproc=1"], cwd=tmp_path)
    assert_same_run(straight, split)


@pytest.mark.slow
def test_torchrun_writes_one_results_folder(tmp_path, fake_mnist):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lifted_cli",
           "train", f"data_root={fake_mnist}", *TINY, "epochs=1", "arch.hidden=[16]", "parallel=data"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env(), timeout=240)
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p.parent for p in (tmp_path / "results").rglob(".hydra"))
    assert len(folders) == 1, folders
    m = json.loads((folders[0] / "metrics.json").read_text())
    assert m["parallel"]["world_size"] == 2
    assert {p.name for p in folders[0].iterdir()} >= {"metrics.json", "history.csv", "checkpoint.pt", "train.log"}


def _workers(pid: int) -> list[int]:
    """The rank processes under the launching process (multiprocessing's spawned children, not its
    resource tracker)."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline and b"resource_tracker import" not in cmdline:
            out.append(int(child))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_ends_the_run_with_one_line(tmp_path, fake_mnist):
    folder = tmp_path / "run"
    cmd = [*LIFTED, "train", f"data_root={fake_mnist}", *TINY, "epochs=100000", "arch.hidden=[16]", "parallel=data",
           "parallel.nproc=2", "parallel.timeout_s=60", f"hydra.run.dir={folder}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        def trained() -> bool:  # an epoch is checkpointed and the next one runs
            log = folder / "train.log"
            return log.exists() and "epoch 2/" in log.read_text(errors="ignore")

        deadline = time.time() + 120
        while time.time() < deadline and not trained():
            time.sleep(0.2)
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)
        t0 = time.time()
        out, err = proc.communicate(timeout=60)
        assert time.time() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "was killed by SIGKILL" in lines[0] and "rank" in lines[0], err  # no library noise
    assert "Traceback" not in out  # the surviving rank lost its peer: no traceback of its own
    assert (folder / "checkpoint.pt").is_file()  # the last good checkpoint stays


@pytest.mark.slow
def test_sigterm_to_a_data_parallel_run_checkpoints_and_resumes(tmp_path, fake_mnist):
    """SIGTERM to the launching process (what a scheduler sends): torch's agent passes it on to the ranks,
    which stop at the same batch; rank 0 checkpoints and prints the resume line, the command exits 143,
    and the run resumes to its end."""
    folder = tmp_path / "run"
    cmd = [*LIFTED, "train", f"data_root={fake_mnist}", *TINY, "epochs=100000", "arch.hidden=[16]", "parallel=data",
           "parallel.nproc=2", "parallel.timeout_s=60", f"hydra.run.dir={folder}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((folder / "train.log").exists()
                                              and "epoch 2/" in (folder / "train.log").read_text(errors="ignore")):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "interrupted (SIGTERM)" in out + err and f"resume={folder}" in out + err
    assert (folder / "checkpoint.pt").is_file() and not (folder / "metrics.json").exists()
    epoch = torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"]
    lifted(["train", f"resume={folder}", f"epochs={epoch + 1}"], cwd=tmp_path)
    assert metrics(folder)["status"] == "finished"
