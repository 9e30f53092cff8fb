"""Training throughput and host syncs: full iterations (Gmain + Dmain + Dreg every 16, EMA) of the real loop.

Not a test: run `python bench/train_step.py` (options: --help). Default: the `shapes` config on 2 CPU threads,
reported as kimg/hour. `--cfg ffhq256` (batch 32, one process) reports s/kimg and needs a GPU to be meaningful.

Besides the timing it reports the host syncs per iteration: the operations after which the host waits for the
device (a tensor value read back: item/tolist/bool/float/int/numpy/cpu, a data-dependent shape such as a boolean
mask index or nonzero, and a blocking host-to-device copy, which CUDA orders behind all queued work). On CUDA they
are counted by torch.cuda.set_sync_debug_mode; on a CPU, where nothing ever waits, by following which tensors would
live on the device (parameters, buffers, data moved with .to(device)) and which on the host (numbers drawn from the
CPU generators, the label table) through every torch call of the step, and counting the reads and mask indexing
of device tensors (blocking uploads cannot be told from host-to-host copies there: CUDA counts them). Each is
listed with its call site.
With --code DIR another checkout (e.g. `git archive HEAD | tar -x -C /tmp/before`) runs the same measurement in a
subprocess: the "before" of a change, in the same run.

It also reports the bytes the loop holds between snapshots as its last good state (`held_state_mb`: a full copy
of G, D, G_ema and both optimizers in the code before this one, nothing now) and the process RSS growth over a few
tick ends without a snapshot. Writes bench/results/train_step-<timestamp>.json (device, git commit, torch version,
load average).

`--memory-step` measures only the memory of one full iteration (Gmain + Dmain + Dreg + EMA, the first iteration
runs Dreg): the peak RSS of the process (ru_maxrss) and its rise above the RSS after set-up, no timing and no sync
counting. `--cfg ffhq256-official` is FFHQ-256 at the official per-GPU batch (batch 32 on 4 GPUs: 8 per process,
one process here); `--batch-gpu N` replaces the setup's per-process batch (and the global batch) by N, to measure a
smaller batch where the official one does not fit and extrapolate per image.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import click
import torch
from torch.overrides import TorchFunctionMode

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
THIS_REPO = os.path.dirname(BENCH_DIR)

SETUPS = {
    "shapes": dict(cli=["--cfg", "shapes"], resolution=16),
    "ffhq256": dict(cli=["--cfg", "ffhq", "--batch", "32", "--batch-gpu", "32", "--gaussian_num_pts", "256",
                         "--res_end", "128", "--prob_uniform", "0.5"], resolution=256),
    # docs/training.md: the official FFHQ-256 run is batch 32 on 4 GPUs, so 8 images per GPU process.
    "ffhq256-official": dict(cli=["--cfg", "ffhq", "--batch", "8", "--batch-gpu", "8", "--gaussian_num_pts", "256",
                                  "--res_end", "128", "--prob_uniform", "0.5"], resolution=256),
}

T = torch.Tensor
READS = {T.item, T.tolist, T.__bool__, T.__float__, T.__int__, T.__index__, T.numpy, T.cpu, T.nonzero,
         torch.nonzero, T.masked_select, torch.masked_select, torch.unique, T.unique}
TRANSFERS = {T.to, T.cuda}
HOST_TAG = "_bench_host"


def _is_host(value) -> bool:
    return isinstance(value, T) and getattr(value, HOST_TAG, False)


def _tensors(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, T):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, T))


def _names_device(args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str)) or (isinstance(a, T) and a is not args[0]) for a in args[1:])


class CpuSyncCounter(TorchFunctionMode):
    """Counts the reads of what would be device tensors on a GPU while the step runs on the CPU (module docstring).

    A tensor is "host" when it was drawn from a CPU generator, made by a factory without a device, tagged by the
    caller, or computed from host tensors only; .to(device, non_blocking=True) (the hot path's uploads) and a
    factory's device= make device tensors. A blocking .to() keeps its input's side, so reads after the blocking
    uploads of older code are undercounted, never overcounted."""

    def __init__(self, roots: tuple[str, ...]):
        super().__init__()
        self.roots = roots
        self.sites: collections.Counter = collections.Counter()

    def _site(self) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            path = os.path.abspath(frame.f_code.co_filename)
            for root in self.roots:
                if path.startswith(root + os.sep) and not path.startswith(os.path.join(root, "bench") + os.sep):
                    return f"{os.path.relpath(path, root)}:{frame.f_lineno} {frame.f_code.co_name}"
            frame = frame.f_back
        return "?"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = list(_tensors(args, kwargs))
        source = args[0] if args and isinstance(args[0], T) else None
        generator = kwargs.get("generator")
        cpu_draw = isinstance(generator, torch.Generator) and generator.device.type == "cpu"
        moves = func in TRANSFERS and _names_device(args, kwargs)
        if func in READS and source is not None and not _is_host(source):
            self.sites[f"device read      {self._site()}"] += 1
        elif func is T.__getitem__ and any(t.dtype == torch.bool and not _is_host(t) for t in tensors[1:]):
            self.sites[f"mask index       {self._site()}"] += 1
        out = func(*args, **kwargs)
        uploads = moves and bool(kwargs.get("non_blocking", False))  # how this code base uploads to the device
        if uploads and out is source:   # a no-op .to() on the CPU: an alias keeps the source's own tag intact
            out = out.view_as(out)
        if isinstance(out, T) and not any(out is t for t in tensors):   # no-ops keep their input's tag
            if cpu_draw:
                host = True
            elif uploads or kwargs.get("device") is not None:
                host = False
            else:
                host = all(_is_host(t) for t in tensors)   # no tensor inputs: a host-side factory
            try:
                setattr(out, HOST_TAG, host)
            except (AttributeError, RuntimeError):
                pass
        return out


class CudaSyncCounter:
    """torch.cuda.set_sync_debug_mode("warn"), one count per warning, by call site."""

    def __init__(self, roots):
        self.roots, self.sites = roots, collections.Counter()

    def __enter__(self):
        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(0)
        self._catch.__exit__(*exc)
        for record in self._records:
            path = os.path.abspath(record.filename)
            where = next((os.path.relpath(path, r) for r in self.roots if path.startswith(r + os.sep)), path)
            self.sites[f"sync             {where}:{record.lineno}"] += 1


def build_config(train, setup: str, data: str | None, device: str, outdir: str, batch_gpu: int | None = None):
    """The same TrainConfig train.py would build (options parsed by its click command); batch_gpu replaces the
    setup's batch and per-process batch."""
    spec = SETUPS[setup]
    if data is None:
        data = train.shapes_dataset(spec["resolution"], 64 if setup != "shapes" else 512)
    args = ["--outdir", outdir, "--data", data, "--device", device, "--workers", "1", "--metrics", "none"] + spec["cli"]
    if batch_gpu is not None:
        args += ["--batch", str(batch_gpu), "--batch-gpu", str(batch_gpu)]  # click keeps the last value
    ctx = train.main.make_context("train.py", args)
    opts = train.merge_bool_flags(ctx.params)
    opts.pop("dry_run")
    return train.build_config(opts)


def time_iterations(trainer, warmup: int, iterations: int) -> list[float]:
    """Seconds per iteration (synchronised on CUDA). On a shared machine report the median."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.train_step()
    times = []
    for _ in range(iterations):
        sync()
        start = time.perf_counter()
        trainer.train_step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def count_syncs(trainer, iterations: int, repo: str) -> dict:
    """Host syncs per iteration over `iterations` iterations (one of them with Dreg), by call site."""
    # Host tensors made before counting starts: the label table, the sampler's permutation, Adam's step counts.
    host_made = [trainer.all_labels, getattr(trainer.sampler, "_cached", (None, None))[1]]
    for opt in (trainer.opt_G, trainer.opt_D):
        host_made += [s.get("step") for s in opt.state.values()]
    for tensor in host_made:
        if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
            tensor.__dict__[HOST_TAG] = True
    counter = CudaSyncCounter((repo,)) if trainer.device.type == "cuda" else CpuSyncCounter((repo,))
    start = trainer.batch_idx
    while trainer.batch_idx % trainer.cfg.loss.r1_interval != 0:  # begin with the iteration that runs Dreg
        trainer.train_step()
    with counter:
        for _ in range(iterations):
            trainer.train_step()
    total = sum(counter.sites.values())
    return {"method": "cuda sync debug mode" if trainer.device.type == "cuda" else "cpu emulation",
            "iterations": iterations, "warmup_iterations": trainer.batch_idx - start - iterations,
            "syncs_per_iteration": total / iterations,
            "by_site_per_iteration": {k: v / iterations for k, v in counter.sites.most_common()}}


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def held_state(trainer, ticks: int) -> dict:
    """RSS growth over `ticks` tick ends that write no snapshot, and the size of what the code before this one
    kept from each (a snapshot payload)."""
    import gc

    trainer.cfg = trainer.cfg.replace(snapshot_ticks=10**9, image_snapshot_ticks=10**9)
    trainer.cur_tick = max(trainer.cur_tick, 1)
    gc.collect()
    before = current_rss_mb()
    for _ in range(ticks):
        trainer.end_tick(final=False)
    gc.collect()
    after = current_rss_mb()
    held = getattr(trainer, "last_good", None)
    payload = trainer.payload()
    payload_bytes = 0

    def visit(value):
        nonlocal payload_bytes
        if isinstance(value, torch.Tensor):
            payload_bytes += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
    visit(payload)
    return {"rss_growth_mb_over_ticks": after - before, "ticks": ticks, "payload_mb": payload_bytes / 2**20,
            "held_state_mb": payload_bytes / 2**20 if held is not None else 0.0}


def measure(repo: str, setup: str, data, device: str, threads: int, warmup: int, iterations: int,
            sync_iterations: int, validate: bool | None) -> dict:
    """Everything for the code in `repo` (imported in this process)."""
    sys.path.insert(0, repo)
    import train
    from torch_utils.run_control import resolve_device
    from training.training_loop import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(train, setup, data, device, tmp)
        torch_device = resolve_device(config.device)
        trainer = Trainer(config, tmp, 0, 1, torch_device)
        trainer.setup()
        trainer.start_time = trainer.tick_start_time = time.time()   # what run() sets before the first tick
        trainer.tick_start_nimg = trainer.cur_nimg
        times = time_iterations(trainer, warmup, iterations)
        syncs = {}
        modes = [None] if validate is None or not hasattr(trainer.runner, "validate") else [True, False]
        for mode in modes:
            if mode is not None:
                trainer.runner.validate = mode
            syncs["training path" if mode in (None, False) else "public path (validate=True)"] = \
                count_syncs(trainer, sync_iterations, repo)
        memory = held_state(trainer, 3)
        trainer.close()
    median = statistics.median(times)
    batch = config.batch_size
    return {"code": repo, "sec_per_iteration_median": median, "sec_per_iteration_all": [round(t, 4) for t in times],
            "sec_per_kimg": median / batch * 1000, "kimg_per_hour": batch / 1000 / (median / 3600),
            "batch": batch, "resolution": config.data.resolution, "device": str(torch_device),
            "syncs": syncs, "memory": memory}


def measure_step_memory(repo: str, setup: str, data, device: str, threads: int, batch_gpu: int | None) -> dict:
    """Peak RSS of one full iteration (Gmain + Dmain + Dreg + EMA) of the code in `repo`, on the CPU."""
    sys.path.insert(0, repo)
    import train
    from torch_utils.run_control import resolve_device
    from training.training_loop import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(train, setup, data, device, tmp, batch_gpu)
        trainer = Trainer(config, tmp, 0, 1, resolve_device(config.device))
        trainer.setup()
        trainer.start_time = trainer.tick_start_time = time.time()
        trainer.tick_start_nimg = trainer.cur_nimg
        setup_rss, setup_peak = current_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        runs_dreg = trainer.batch_idx % trainer.cfg.loss.r1_interval == 0
        start = time.perf_counter()
        trainer.train_step()
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        trainer.close()
    return {"code": repo, "batch_gpu": config.batch_gpu, "resolution": config.data.resolution,
            "device": str(device), "threads": threads, "iteration_includes_dreg": runs_dreg,
            "rss_after_setup_mb": setup_rss, "peak_rss_before_step_mb": setup_peak, "peak_rss_mb": peak,
            "step_rise_above_setup_mb": peak - setup_rss, "step_seconds": seconds}


@click.command()
@click.option("--cfg", "setup", type=click.Choice(sorted(SETUPS)), default="shapes", show_default=True)
@click.option("--data", help="Dataset zip (default: the synthetic dataset at the setup's resolution).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="CPU threads (torch.set_num_threads).")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--iterations", type=int, default=16, show_default=True, help="Timed iterations (one Dreg).")
@click.option("--sync-iterations", type=int, default=2, show_default=True, help="Iterations counted for syncs.")
@click.option("--code", "code", default=None, metavar="DIR", help="Also measure this checkout (the code before).")
@click.option("--json-only", is_flag=True, hidden=True, help="Print one JSON object, write nothing (--code runs).")
@click.option("--memory-step", is_flag=True, help="Only the peak RSS of one full iteration (no timing, no syncs).")
@click.option("--batch-gpu", "batch_gpu", type=click.IntRange(min=1), default=None,
              help="Per-process (and global) batch instead of the setup's, e.g. to extrapolate per image.")
def main(setup, data, device, threads, warmup, iterations, sync_iterations, code, json_only, memory_step, batch_gpu):
    load_start = os.getloadavg()
    if memory_step:
        result = measure_step_memory(THIS_REPO, setup, data, device, threads, batch_gpu)
        sys.path.insert(0, BENCH_DIR)
        from _results import git_commit, write_results

        result.update(benchmark="train_step_memory", setup=setup, load_average_start=load_start,
                      load_average_end=os.getloadavg(), git_commit=git_commit(), torch=torch.__version__)
        click.echo(f"{setup}, batch {result['batch_gpu']} per process at {result['resolution']} px: peak RSS "
                   f"{result['peak_rss_mb']:.0f} MB, {result['step_rise_above_setup_mb']:.0f} MB above the "
                   f"{result['rss_after_setup_mb']:.0f} MB after set-up (one iteration with Dreg: "
                   f"{result['iteration_includes_dreg']}, {result['step_seconds']:.0f} s)")
        click.echo(f"wrote {write_results('train_step', result)}")
        return
    if json_only:
        result = measure(THIS_REPO if code is None else os.path.abspath(code), setup, data, device, threads, warmup,
                         iterations, sync_iterations, validate=True)
        click.echo("RESULT " + json.dumps(result))
        return
    runs = {}
    if code is not None:
        if not os.path.isfile(os.path.join(code, "training", "training_loop.py")):
            raise click.BadParameter(f"{code!r} is not a gsgan checkout (no training/training_loop.py)",
                                     param_hint="--code")
        args = [sys.executable, os.path.abspath(__file__), "--json-only", "--code", code, "--cfg", setup,
                "--device", device, "--threads", str(threads), "--warmup", str(warmup), "--iterations",
                str(iterations), "--sync-iterations", str(sync_iterations)] + (["--data", data] if data else [])
        proc = subprocess.run(args, capture_output=True, text=True, cwd=code)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise click.ClickException(f"--code {code}: the measurement failed: {proc.stderr.strip()[-2000:]}")
        runs["before"] = json.loads(lines[0][len("RESULT "):])
    runs["current"] = measure(THIS_REPO, setup, data, device, threads, warmup, iterations, sync_iterations,
                              validate=True)
    sys.path.insert(0, BENCH_DIR)
    from _results import git_commit, write_results

    current = runs["current"]
    result = {
        "benchmark": "train_step", "setup": setup, "device": current["device"],
        "device_name": torch.cuda.get_device_name() if current["device"].startswith("cuda") else platform.machine(),
        "threads": threads, "iterations": iterations, "runs": runs,
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "git_commit": git_commit(), "torch": torch.__version__,
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    click.echo(json.dumps(result, indent=2))
    for name, run in runs.items():
        for path, counted in run["syncs"].items():
            click.echo(f"{name:8s} {path}: {counted['syncs_per_iteration']:.2f} host syncs / iteration "
                       f"({counted['method']})")
        click.echo(f"{name:8s} held between snapshots: {run['memory']['held_state_mb']:.1f} MB; RSS growth over "
                   f"{run['memory']['ticks']} ticks: {run['memory']['rss_growth_mb_over_ticks']:.1f} MB; "
                   f"{run['sec_per_iteration_median']:.3f} s / iteration")
    click.echo(f"wrote {write_results('train_step', result)}")


if __name__ == "__main__":
    main()
