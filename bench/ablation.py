"""The paper's central ablation in miniature: the hierarchical generator against the naive one, same data, same time.

    python bench/ablation.py                      # the quickstart's data and budget (20 kimg of the hierarchy)
    python bench/ablation.py --minutes 2 --metric fid500_full --outdir training-runs/ablation

Both generators (train.py --arch hierarchical / naive) train with the small `shapes` preset on the same dataset
(default: the quickstart's, datasets/shapes16.zip, built if missing) for the same wall-clock budget:
  1. calibrate: one training process of each architecture take iterations in turn in this process (one thread,
     as each run gets), so both see the same machine load; their mean seconds per iteration over a multiple of
     the lazy-R1 interval give t_h and t_n;
  2. budget B seconds: --minutes, or by default the time the hierarchy needs for the quickstart's 20 kimg. Each
     architecture trains round(B / t) iterations (step counts rather than a clock keep the runs deterministic,
     so they can run side by side, one thread each, without changing what they compute);
  3. calc_metrics.py on each run's first snapshot (after one iteration: the untrained generator) and last one.
Prints both FIDs side by side with the runs' latest image grids, and writes bench/results/ablation-<timestamp>.json
(git commit, load average, every figure).
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import click

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)

ARCHS = ("hierarchical", "naive")
QUICKSTART_DATA = os.path.join("datasets", "shapes16.zip")
QUICKSTART_SYNTH = ["--poses", "ffhq", "--count", "2000", "--resolution", "16", "--seed", "0"]
QUICKSTART_KIMG = 20.0
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class AblationError(click.ClickException):
    """A step of the protocol failed (names the command and its last output line)."""


def train_args(arch: str, data: str, outdir: str, kimg: float, seed: int) -> list[str]:
    """train.py arguments of one run (also what the calibration parses, so both train the same configuration)."""
    return ["--outdir", outdir, "--cfg", "shapes", "--data", data, "--arch", arch, f"--kimg={kimg:g}",
            "--metrics", "none", "--seed", str(seed), "--device", "cpu", "--desc", f"ablation-{arch}"]


def _trainer(arch: str, data: str, seed: int, run_dir: str):
    import torch

    import train
    from training.training_loop import Trainer

    ctx = train.main.make_context("train.py", train_args(arch, data, run_dir, 1.0, seed) + ["--workers", "0"])
    opts = train.merge_bool_flags(ctx.params)
    opts.pop("dry_run")
    os.makedirs(run_dir)
    trainer = Trainer(train.build_config(opts), run_dir, 0, 1, torch.device("cpu"))
    trainer.setup()
    return trainer


def calibrate(data: str, seed: int, iterations: int) -> dict:
    """Mean seconds per training iteration of each architecture (one thread, iterations interleaved)."""
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {arch: _trainer(arch, data, seed, os.path.join(tmp, arch)) for arch in ARCHS}
        times = {arch: [] for arch in ARCHS}
        try:
            for i in range(iterations + 1):  # the first iteration of each is a warm-up
                for arch, trainer in trainers.items():
                    start = time.perf_counter()
                    trainer.train_step()
                    if i:
                        times[arch].append(time.perf_counter() - start)
        finally:
            for trainer in trainers.values():
                trainer.close()
    return {arch: sum(values) / len(values) for arch, values in times.items()}


def _run(args: list[str], log_path: str | None = None) -> subprocess.Popen:
    """A repository script in a one-thread subprocess; its output goes to log_path, or a pipe."""
    kwargs = dict(cwd=REPO_ROOT, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ONE_THREAD})
    if log_path is None:
        return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, **kwargs)
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, *args], stdout=log, **kwargs)


def _wait(proc: subprocess.Popen, what: str, log_path: str | None = None) -> str:
    """The finished process's output; AblationError with its last line when it failed."""
    output, _ = proc.communicate()
    if log_path:
        with open(log_path) as handle:
            output = handle.read()
    if proc.returncode != 0:
        last = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
        raise AblationError(f"{what} failed (exit status {proc.returncode}): {last[-1] if last else 'no output'}"
                            + (f"; log: {log_path}" if log_path else ""))
    return output


def run_dir_from(output: str, what: str) -> str:
    """The run directory train.py names in its last line ("done: DIR (kimg ...); last snapshot: ...")."""
    for line in reversed(output.splitlines()):
        if line.startswith("done: "):
            return line[len("done: "):].split(" (kimg")[0]
    raise AblationError(f"{what}: train.py did not report a finished run")


def snapshots(run_dir: str) -> list[str]:
    from torch_utils.checkpoint import list_snapshots

    found = list_snapshots(run_dir)
    if not found:
        raise AblationError(f"{run_dir}: no network-snapshot-*.pt")
    return found


def fid(metric: str, snapshot: str) -> float:
    output = _wait(_run(["calc_metrics.py", f"--metrics={metric}", f"--network={snapshot}", "--device=cpu"]),
                   f"calc_metrics.py on {snapshot}")
    result = json.loads(output.strip().splitlines()[-1])
    return float(result["results"][metric])


def latest_grid(run_dir: str) -> str | None:
    """The fakesKKKKKK[.FFF].png written last, by image count (names below a whole kimg carry a fraction)."""
    grids = []
    for path in glob.glob(os.path.join(run_dir, "fakes*.png")):
        match = re.fullmatch(r"fakes(\d+)(?:\.(\d{3}))?\.png", os.path.basename(path))
        if match:
            grids.append((int(match.group(1)), int(match.group(2) or 0), path))
    return max(grids)[2] if grids else None


def ensure_data(data: str | None) -> str:
    """--data, or the quickstart's dataset (built with the quickstart's command when missing)."""
    if data is not None:
        if not os.path.exists(data):
            raise click.BadParameter(f"{data} does not exist", param_hint="--data")
        return data
    path = os.path.join(REPO_ROOT, QUICKSTART_DATA)
    if not os.path.isfile(path):
        click.echo(f"building the quickstart's dataset {path} ...")
        _wait(_run(["dataset_tool.py", "synth", *QUICKSTART_SYNTH, "--dest", path]), "dataset_tool.py synth")
    return path


@click.command(help=__doc__)
@click.option("--data", metavar="ZIP", default=None, help=f"Training data [default: {QUICKSTART_DATA}].")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Wall-clock budget per architecture [default: the hierarchy's time for {QUICKSTART_KIMG:g} kimg].")
@click.option("--metric", default="fid500_full", show_default=True, help="calc_metrics.py metric.")
@click.option("--outdir", default=os.path.join("training-runs", "ablation"), show_default=True,
              help="Where the runs are created (OUTDIR/hierarchical/NNNNN-..., OUTDIR/naive/NNNNN-...) and logged.")
@click.option("--calibration-iterations", type=click.IntRange(min=1), default=16, show_default=True,
              help="Timed iterations per architecture (16 = one lazy-R1 interval).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--sequential", is_flag=True, help="Train one run after the other instead of side by side.")
def main(data, minutes, metric, outdir, calibration_iterations, seed, sequential):
    from metrics import metric_main

    if not metric_main.is_valid_metric(metric):
        raise click.BadParameter(f"unknown metric {metric!r}; {metric_main.valid_metrics_message()}",
                                 param_hint="--metric")
    from training.config import CFG_DEFAULTS

    data = ensure_data(data)
    batch = CFG_DEFAULTS["shapes"]["batch"]
    click.echo(f"calibrating ({calibration_iterations} iterations of each architecture, one thread) ...")
    per_iteration = calibrate(data, seed, calibration_iterations)
    budget = minutes * 60 if minutes is not None else QUICKSTART_KIMG * 1000 / batch * per_iteration["hierarchical"]
    kimg = {arch: max(1, round(budget / t)) * batch / 1000 for arch, t in per_iteration.items()}
    for arch in ARCHS:
        click.echo(f"  {arch:<12} {per_iteration[arch]:.3f} s/iteration -> {kimg[arch]:g} kimg in "
                   f"{budget / 60:.1f} min")

    os.makedirs(outdir, exist_ok=True)
    runs, procs = {}, {}
    for arch in ARCHS:
        log = os.path.join(outdir, f"train-{arch}-{time.strftime('%Y%m%d-%H%M%S')}.log")
        run_root = os.path.join(outdir, arch)  # one folder each: two train.py never pick a run number together
        procs[arch] = (_run(["train.py", *train_args(arch, data, run_root, kimg[arch], seed)], log), log)
        if sequential:
            runs[arch] = run_dir_from(_wait(procs[arch][0], f"train.py --arch={arch}", log), arch)
    for arch in ARCHS:
        if arch not in runs:
            runs[arch] = run_dir_from(_wait(procs[arch][0], f"train.py --arch={arch}", procs[arch][1]), arch)

    results = {}
    for arch in ARCHS:
        found = snapshots(runs[arch])
        results[arch] = {"run_dir": runs[arch], "kimg": kimg[arch], "sec_per_iteration": per_iteration[arch],
                         "untrained_snapshot": found[0], "final_snapshot": found[-1],
                         "fid_untrained": fid(metric, found[0]), "fid_final": fid(metric, found[-1]),
                         "grid": latest_grid(runs[arch])}
    h, n = results["hierarchical"], results["naive"]
    click.echo(f"\n{metric} after {budget / 60:.1f} min of training each (data {data}):")
    click.echo(f"  {'':<14}{'hierarchical':>14}{'naive':>14}")
    click.echo(f"  {'kimg':<14}{h['kimg']:>14g}{n['kimg']:>14g}")
    click.echo(f"  {'untrained':<14}{h['fid_untrained']:>14.2f}{n['fid_untrained']:>14.2f}")
    click.echo(f"  {'trained':<14}{h['fid_final']:>14.2f}{n['fid_final']:>14.2f}")
    click.echo(f"  hierarchical / naive (trained): {h['fid_final'] / n['fid_final']:.2f}")
    for arch in ARCHS:
        click.echo(f"  {arch} grid: {results[arch]['grid']}")
    path = write_results("ablation", {"commit": git_commit(), "load_average": os.getloadavg(), "data": data,
                                      "metric": metric, "budget_seconds": budget, "minutes_option": minutes,
                                      "seed": seed, "parallel": not sequential, "runs": results})
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
