"""runs.py: atomic writes, the one checkpoint loader, devices, the divergence error, the clean-up of
unfinished folders, the deferred interrupt."""

import math
import os
import signal
import sys

import pytest
import torch

from lifted_cli.errors import ConfigError, DivergenceError, InputError
from lifted_cli.runs import (DeferredInterrupt, RunFolder, check_device, divergence, load_checkpoint, load_tensor, read_csv,
                             save_torch, select_device, write_csv, write_json)


def test_atomic_writes_leave_no_temporary_file_and_keep_the_old_content_on_failure(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1.0, "b": float("inf")})
    assert (tmp_path / "m.json").read_text().count('"inf"') == 1
    write_csv(tmp_path / "h.csv", [{"epoch": 1, "loss": 0.5}])
    assert read_csv(tmp_path / "h.csv") == [{"epoch": "1", "loss": "0.5"}]
    with pytest.raises(TypeError):
        write_json(tmp_path / "m.json", {"bad": object()})
    assert '"a": 1.0' in (tmp_path / "m.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_checkpoints_load_with_weights_only_and_refuse_code(tmp_path):
    save_torch(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(2)}, "config": {"arch": {}}})
    ckpt, path = load_checkpoint(tmp_path)  # a run folder
    assert path == tmp_path / "checkpoint.pt" and torch.equal(ckpt["model"]["w"], torch.ones(2))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(InputError, match="not a tensor"):
        load_tensor(str(tmp_path / "list.pt"), "outputs")


def test_devices():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "gpu0"):
        with pytest.raises(ConfigError, match=f"device={bad}"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            check_device("cuda")


def test_divergence_names_a_checkpoint_only_when_there_is_one(tmp_path):
    assert isinstance(divergence("x diverged", tmp_path / "checkpoint.pt"), DivergenceError)
    assert "checkpoint" not in str(divergence("x diverged", tmp_path / "checkpoint.pt"))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert str(tmp_path / "checkpoint.pt") in str(divergence("x diverged", tmp_path / "checkpoint.pt"))


def test_a_run_folder_removes_only_what_its_run_made(tmp_path):
    made = RunFolder(tmp_path / "made").claim()  # the run creates the folder: it goes entirely
    (made.path / ".hydra").mkdir()
    (made.path / "train.log").write_text("")
    made.remove_unfinished()
    assert not made.path.exists()
    (tmp_path / "given").mkdir()  # an empty folder the user gave: it stays, empty
    given = RunFolder(tmp_path / "given").claim()
    (given.path / ".hydra").mkdir()
    given.remove_unfinished()
    given.release()
    assert given.path.is_dir() and not any(given.path.iterdir())
    kept = RunFolder(tmp_path / "kept").claim()  # a result was written (a diverged run's last good
    (kept.path / ".hydra").mkdir()  # checkpoint): everything stays for resume and report, but the lock
    (kept.path / "checkpoint.pt").write_bytes(b"")
    kept.remove_unfinished()
    kept.release()
    assert sorted(p.name for p in kept.path.iterdir()) == [".hydra", "checkpoint.pt"]


def test_check_free_and_the_lock(tmp_path):
    RunFolder.check_free("hydra.run.dir", tmp_path / "new")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunFolder.check_free("hydra.run.dir", tmp_path / "file")
    with pytest.raises(ConfigError, match="holds files already"):
        RunFolder.check_free("hydra.run.dir", tmp_path)
    a = RunFolder(tmp_path / "run").claim()
    with pytest.raises(ConfigError, match="in use"):
        RunFolder(tmp_path / "run").claim()
    a.release()
    RunFolder(tmp_path / "run").claim().release()
    (tmp_path / "run" / ".metrics.json.x1.tmp").write_text("")
    (tmp_path / "run" / ".notes.txt.tmp").write_text("not ours")
    assert RunFolder(tmp_path / "run").sweep_temporaries() == [".metrics.json.x1.tmp"]
    assert (tmp_path / "run" / ".notes.txt.tmp").exists()


def test_a_first_interrupt_is_deferred_and_a_second_one_is_not():
    stop = DeferredInterrupt()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()


def test_step_clock_times_steps_and_samples_the_peak_memory():
    from lifted_cli.runs import StepClock

    clock = StepClock(torch.device("cpu"))
    assert math.isnan(clock.median_ms())
    for _ in range(3):
        clock.start()
        big = torch.ones(2**20)  # 4 MiB touched: resident
        clock.stop()
    assert len(clock.seconds) == 3 and clock.median_ms() > 0 and clock.median_ms(since=2) == clock.seconds[2] * 1e3
    assert clock.peak >= big.numel() * 4


def test_the_allocator_is_tuned_on_glibc_and_left_alone_elsewhere(monkeypatch):
    from lifted_cli import runs

    import ctypes

    try:
        glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        glibc = False
    assert runs.tune_allocator() is glibc
    monkeypatch.setattr(runs.sys, "platform", "darwin")
    assert runs.tune_allocator() is False


def test_threads_are_this_process_share_of_the_idle_cores(monkeypatch):
    """threads=N is N; auto respects OMP_NUM_THREADS, else divides the usable cores by the processes that
    share them (ranks on this node, a joblib sweep's jobs) and takes no more than the idle cores."""
    import torch

    from lifted_cli import runs

    before = torch.get_num_threads()
    try:
        assert runs.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(runs, "usable_cores", lambda: 8)
        monkeypatch.setattr(runs, "idle_cores", lambda seconds=0.1: 8.0)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert runs.set_threads("auto") == 8  # a quiet machine, one process
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
        assert runs.set_threads("auto") == 2  # four ranks on this node
        monkeypatch.setattr(runs, "idle_cores", lambda seconds=0.1: 1.2)
        assert runs.set_threads("auto") == 1  # other processes keep the rest busy
        monkeypatch.setattr(runs, "idle_cores", lambda seconds=0.1: None)
        assert runs.set_threads("auto") == 2  # no /proc/stat: the share alone
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert runs.set_threads("auto") == 3  # the user's setting stands
    finally:
        torch.set_num_threads(before)


def test_idle_cores_reads_the_machine():
    from lifted_cli.runs import idle_cores

    idle = idle_cores(0.05)
    assert idle is None or 0 <= idle <= (__import__("os").cpu_count() or 1) + 0.5
