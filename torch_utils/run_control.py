"""Process-level plumbing both training loops (GAN and reconstruction) share: the device of a rank, DataLoader
workers that leave stop signals to the main process (and are stopped for sure when training ends), SIGINT /
SIGTERM handlers that ask for a clean stop (or wait for the end of a step that must not be cut in half), and the exit
status that tells a finished run from an interrupted one. Torch is imported only where a function needs it, so
that torch-free command-line tools (dataset_tool) can use the signal helpers and still start fast."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Exit status of a training CLI per run status: 0 finished (also a reconstruction run that reached its time
# limit), 1 stopped by a training fault, 3 interrupted by SIGINT / SIGTERM after writing a snapshot (not finished:
# continue with --resume). 2 stays click's usage error.
EXIT_STATUS = {"done": 0, "time_limit": 0, "fault": 1, "interrupted": 3}
WORKER_JOIN_TIMEOUT_S = 5.0


def exit_status(status: str) -> int:
    """Process exit status of a run that ended with `status` (see EXIT_STATUS)."""
    if status not in EXIT_STATUS:
        raise ValueError(f"run status: expected one of {sorted(EXIT_STATUS)}, got {status!r}")
    return EXIT_STATUS[status]


class DeviceUnavailable(RuntimeError):
    """--device cuda on a machine without a usable CUDA device."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'cuda', 'cpu' or 'auto' (CUDA when available) -> the device of local rank `local_rank`."""
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DeviceUnavailable("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker_init_fn: Ctrl+C / SIGTERM are the main process's, which finishes the step and snapshots;
    a worker dying first would crash the main process before it could save anything."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def shutdown_loader(iterator, timeout: float = WORKER_JOIN_TIMEOUT_S) -> None:
    """Stop the worker processes of a DataLoader iterator now, whatever state they are in.

    Workers ignore SIGTERM (ignore_stop_signals), so the DataLoader's own shutdown (which ends with terminate())
    and the interpreter's exit (which joins every child) can wait on one forever, e.g. after an exception whose
    traceback keeps the iterator alive. Here: the DataLoader's shutdown, then SIGKILL for any worker still alive
    after `timeout` seconds. A single-process iterator has nothing to stop."""
    workers = list(getattr(iterator, "_workers", ()))
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        try:
            shutdown()
        except Exception:  # noqa: BLE001  a broken queue must not prevent the kill below
            pass
    for worker in workers:
        worker.join(timeout)
        if worker.is_alive():
            worker.kill()
            worker.join(timeout)


def install_stop_handlers(on_signal: Callable[[str], None]) -> dict:
    """Call on_signal(name) on SIGINT / SIGTERM instead of dying; returns the previous handlers (none are touched
    outside the main thread, where Python cannot install them)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame):
        on_signal(signal.Signals(signum).name)
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def restore_handlers(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


def _raise_interrupt(signal_name: str) -> None:
    raise KeyboardInterrupt(signal_name)


@contextlib.contextmanager
def stop_signals_interrupt():
    """SIGINT and SIGTERM raise KeyboardInterrupt(signal name) while the block runs, so a SIGTERM unwinds like
    Ctrl+C: `finally` blocks remove temp files and kill child processes instead of the process dying mid-write."""
    previous = install_stop_handlers(_raise_interrupt)
    try:
        yield
    finally:
        restore_handlers(previous)


@contextlib.contextmanager
def stop_signals_deferred():
    """SIGINT / SIGTERM arriving inside the block take effect (through the handlers installed before) only when
    it ends. For steps that must not be cut in half by the exception a handler raises: a child process started
    but not yet recorded (e.g. a SIGTERM while Popen waits for exec) would be left running, a temp file created
    but not yet named would be left behind. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    # A handler installed outside Python (getsignal() is None) could not be put back: that signal is left alone.
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum)) for sig in STOP_SIGNALS
                if signal.getsignal(sig) is not None}
    try:
        yield
    finally:
        restore_handlers(previous)
        if pending:
            signal.raise_signal(pending[0])  # the restored handler runs now, with the block's work recorded


def run_rank(make_trainer: Callable, rank: int, world: int, device_name: str, init_method: str | None = None,
             local_rank: int = 0, on_cuda: Callable | None = None):
    """Body of one training process: its device (on_cuda() runs after selecting a CUDA device, e.g. TF32 flags;
    on the CPU the cores are shared among the processes), the process group, then trainer = make_trainer(device):
    setup(), run() and close(). Returns run()'s result."""
    import os

    import torch

    from torch_utils import distributed

    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if on_cuda is not None:
            on_cuda()
    elif world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    distributed.init(rank, world, device, init_method)
    trainer = None
    try:
        trainer = make_trainer(device)
        trainer.setup()
        result = trainer.run()
        # Every rank reaches the teardown together: a Gloo peer destroyed while the other still talks aborts the
        # process ("terminate called without an active exception"), seen once in CI after a successful run.
        distributed.barrier()
        return result
    finally:
        if trainer is not None:
            trainer.close()
        distributed.cleanup()


OPTIONS_FILE = "training_options.json"
# What start-up leaves in a run folder before anything is trained: the options, the log and stats files opened
# empty, and TensorBoard's event file header (when tensorboard is installed).
_START_UP_FILE_PREFIXES = ("events.out.tfevents.",)


def write_options(run_dir: str, options) -> None:
    """run_dir/training_options.json (the options' to_json(), written all-or-nothing)."""
    import os

    from dnnlib import atomic_file

    with atomic_file(os.path.join(run_dir, OPTIONS_FILE), "w") as handle:
        handle.write(options.to_json() + "\n")


def remove_unused_run_dir(run_dir: str) -> bool:
    """Delete run_dir when it holds nothing a failed start wrote for the user (only training_options.json,
    empty files and TensorBoard event headers), so that it does not pass for a run. Returns whether it did.
    Best effort: it runs while another error is on its way to the user, so it never raises."""
    import os

    try:
        entries = list(os.scandir(run_dir))
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                return False
            start_up = entry.name == OPTIONS_FILE or entry.name.startswith(_START_UP_FILE_PREFIXES)
            if not start_up and entry.stat(follow_symlinks=False).st_size > 0:
                return False
        for entry in entries:
            os.remove(entry.path)
        os.rmdir(run_dir)
    except OSError:
        return False
    return True


def launch_training(options, description: str, process: Callable, spawned: Callable, result_type: type):
    """Validate `options`, create outdir/NNNNN-description with training_options.json and train in one process,
    options.num_gpus spawned processes, or as one torchrun rank. Returns rank 0's result (each torchrun rank its own).

    process(rank, world, options, run_dir, init_method=None, local_rank=0) runs one rank and returns a result;
    spawned(index, init_method, world, options_dict, run_dir) is the picklable top-level entry of a spawned rank
    (it rebuilds the options and returns result.__dict__). options needs validate(), to_dict(), to_json(),
    num_gpus, device and outdir. A start that fails before anything was written into the run folder (see
    remove_unused_run_dir) removes the folder again before the error goes on."""
    import dnnlib
    from torch_utils import distributed

    options.validate()
    if distributed.launched_by_torchrun():
        rank, local_rank, world = distributed.torchrun_ranks()
        if options.num_gpus != world:
            raise ValueError(f"--gpus={options.num_gpus} does not match torchrun's WORLD_SIZE={world}")
        distributed.init(rank, world, resolve_device(options.device, local_rank))
        run_dir = None
        if rank == 0:
            run_dir = dnnlib.make_run_dir(options.outdir, description)
            write_options(run_dir, options)
        run_dir = distributed.all_gather_objects(run_dir)[0]
        with _removed_when_unused(run_dir if rank == 0 else None):
            return process(rank, world, options, run_dir, local_rank=local_rank)
    run_dir = dnnlib.make_run_dir(options.outdir, description)
    with _removed_when_unused(run_dir):
        write_options(run_dir, options)
        if options.num_gpus == 1:
            return process(0, 1, options, run_dir)
        results = distributed.spawn(spawned, options.num_gpus, args=(options.num_gpus, options.to_dict(), run_dir))
    return result_type(**results[0])


@contextlib.contextmanager
def _removed_when_unused(run_dir: str | None):
    """On an exception, remove_unused_run_dir(run_dir) (None: nothing to do), then let the exception go on."""
    try:
        yield
    except BaseException:
        if run_dir is not None:
            remove_unused_run_dir(run_dir)
        raise
