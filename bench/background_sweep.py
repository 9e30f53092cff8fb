"""The small preset on every backdrop: each synthetic family x background, trained and scored by FID.

    python bench/background_sweep.py                                  # all 15 cells, 20 kimg each (hours)
    python bench/background_sweep.py --families rings --backgrounds grey,gradient --kimg 2
    python bench/background_sweep.py --backdrop off                   # the same cells without the backdrop

Each cell (family, background) runs, one after the other:
  1. data: `dataset_tool.py synth --family F --background B` with the quickstart's options (2,000 images of 16 px,
     ffhq poses, seed 0) into OUTDIR/data/, reused by later invocations;
  2. train: `train.py --cfg shapes --kimg K` (its backdrop: --backdrop, by default the preset's auto) in
     OUTDIR/runs/<cell>/, with --threads intra-op threads; an interrupted cell resumes from its latest snapshot;
  3. score: --metric (fid500_full: all 2,000 reals vs 500 generated) of the untrained generator (the first run's
     first snapshot, after one iteration) and of the final one. A cell passes when the final FID is at most half
     the untrained one (the criterion of the issue that asked for backdrops).
Every finished step is written atomically to OUTDIR/cells/<cell>.json and never redone, so an interrupted sweep
continues where it stopped and a second invocation skips finished cells. The table of the requested cells is
printed and written to bench/results/background_sweep-<timestamp>.json (git commit, load average, every figure).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)
from ablation import QUICKSTART_SYNTH, fid, latest_grid, run_dir_from, snapshots  # noqa: E402

from dnnlib import atomic_file  # noqa: E402
from training.config import BACKDROP_MODES  # noqa: E402
from training.synthetic_scenes import BACKGROUNDS, FAMILIES  # noqa: E402

PASS_RATIO = 0.5  # final FID at most this fraction of the untrained generator's


class SweepError(click.ClickException):
    """A step of one cell failed (names the command, its last output line and its log)."""


def name_list(kind: str, known) -> click.ParamType:
    """Comma-separated names, each one of `known`, in the order given (duplicates dropped)."""

    class NameList(click.ParamType):
        name = "list"

        def convert(self, value, param, ctx):
            if isinstance(value, tuple):
                return value
            names = list(dict.fromkeys(n.strip() for n in str(value).split(",") if n.strip()))
            bad = [n for n in names if n not in known]
            if bad or not names:
                found = f"unknown {kind} {', '.join(map(repr, bad))}" if bad else "nothing given"
                self.fail(f"{found}; expected a comma-separated list of {', '.join(known)}", param, ctx)
            return tuple(names)

    return NameList()


def cell_name(family: str, background: str, backdrop: str, kimg: float) -> str:
    return f"{family}-{background}-{backdrop}-{kimg:g}kimg"


def read_cell(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def write_cell(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path, "w") as handle:
        json.dump(record, handle, indent=2)


def run_logged(args: list[str], log_path: str, threads: int, what: str) -> str:
    """A repository script with `threads` intra-op threads, output to log_path; its output (SweepError with the
    last line when it failed)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log_path, "w") as log:
        code = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              text=True, env=env).returncode
    with open(log_path) as handle:
        output = handle.read()
    if code != 0:
        last = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
        raise SweepError(f"{what} failed (exit status {code}): {last[-1] if last else 'no output'}; log: {log_path}")
    return output


def runs_with_snapshots(run_root: str) -> list[str]:
    """The cell's run directories (NNNNN-..., in order) holding a snapshot: a resumed run is a new one."""
    from torch_utils.checkpoint import list_snapshots

    if not os.path.isdir(run_root):
        return []
    found = [os.path.join(run_root, n) for n in sorted(os.listdir(run_root)) if n[:5].isdigit()]
    return [d for d in found if os.path.isdir(d) and list_snapshots(d)]


def snapshot_nimg(path: str) -> int:
    from torch_utils.checkpoint import read_snapshot_dict

    return int(read_snapshot_dict(path)["progress"]["cur_nimg"])


def run_cell(family: str, background: str, backdrop: str, kimg: float, outdir: str, metric: str, threads: int,
             seed: int) -> dict:
    """One cell, each finished step recorded in its cell file and skipped when already there."""
    name = cell_name(family, background, backdrop, kimg)
    path = os.path.join(outdir, "cells", f"{name}.json")
    record = read_cell(path)
    if record.get("done"):
        click.echo(f"{name}: finished earlier, skipped")
        return record
    record.update(family=family, background=background, backdrop=backdrop, kimg=kimg, metric=metric)
    logs = os.path.join(outdir, "logs")
    os.makedirs(logs, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    data = os.path.join(outdir, "data", f"{family}-{background}-16px.zip")
    if not os.path.isfile(data):
        click.echo(f"{name}: building {data} ...")
        os.makedirs(os.path.dirname(data), exist_ok=True)
        run_logged(["dataset_tool.py", "synth", *QUICKSTART_SYNTH, "--family", family, "--background", background,
                    "--dest", data], os.path.join(logs, f"synth-{family}-{background}-{stamp}.log"), threads,
                   "dataset_tool.py synth")
    record["data"] = data

    run_root = os.path.join(outdir, "runs", name)
    runs = runs_with_snapshots(run_root)
    final = snapshots(runs[-1])[-1] if runs else None
    if final is None or snapshot_nimg(final) < kimg * 1000:
        args = ["train.py", "--outdir", run_root, "--cfg", "shapes", "--data", data, f"--kimg={kimg:g}",
                "--metrics", "none", "--seed", str(seed), "--device", "cpu", "--desc", name]
        args += [] if backdrop == "preset" else ["--backdrop", backdrop]
        args += ["--resume", final] if final else []
        click.echo(f"{name}: training to {kimg:g} kimg{' (resuming ' + final + ')' if final else ''} ...")
        start = time.time()
        output = run_logged(args, os.path.join(logs, f"train-{name}-{stamp}.log"), threads, f"train.py ({name})")
        runs.append(run_dir_from(output, name))
        record["train_seconds"] = record.get("train_seconds", 0.0) + time.time() - start
    record["runs"] = runs
    record["untrained_snapshot"], record["final_snapshot"] = snapshots(runs[0])[0], snapshots(runs[-1])[-1]
    write_cell(path, record)
    with open(os.path.join(runs[-1], "training_options.json")) as handle:
        options = json.load(handle)["G"]
    record["backdrop_resolved"], record["backdrop_color"] = options["backdrop"], options["backdrop_color"]
    record["grid"] = latest_grid(runs[-1])
    for key, snapshot in (("fid_untrained", record["untrained_snapshot"]), ("fid_final", record["final_snapshot"])):
        if key not in record:
            click.echo(f"{name}: {metric} of {os.path.basename(snapshot)} ...")
            record[key] = fid(metric, snapshot)
            write_cell(path, record)
    record["ratio"] = record["fid_final"] / record["fid_untrained"]
    record["passed"] = record["ratio"] <= PASS_RATIO
    record["done"] = True
    write_cell(path, record)
    return record


def table(records: list[dict], metric: str) -> str:
    lines = [f"{'family':<8}{'background':<12}{'backdrop':<10}{'kimg':>6}{'untrained':>11}{'final':>9}"
             f"{'ratio':>7}  pass", "-" * 70]
    for r in records:
        lines.append(f"{r['family']:<8}{r['background']:<12}{r['backdrop_resolved']:<10}{r['kimg']:>6g}"
                     f"{r['fid_untrained']:>11.2f}{r['fid_final']:>9.2f}{r['ratio']:>7.2f}  "
                     f"{'yes' if r['passed'] else 'NO'}")
    passed = sum(r["passed"] for r in records)
    lines.append(f"{passed} of {len(records)} cells pass ({metric} final <= {PASS_RATIO:g} x untrained)")
    return "\n".join(lines)


@click.command(help=__doc__)
@click.option("--families", type=name_list("family", tuple(FAMILIES)), default=",".join(FAMILIES),
              show_default=True, help="Object families to run.")
@click.option("--backgrounds", type=name_list("background", BACKGROUNDS), default=",".join(BACKGROUNDS),
              show_default=True, help="Backdrops to run.")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Training length of every cell.")
@click.option("--backdrop", type=click.Choice(["preset", *BACKDROP_MODES]), default="preset", show_default=True,
              help="train.py --backdrop (preset: the shapes preset's choice, auto).")
@click.option("--metric", default="fid500_full", show_default=True, help="calc_metrics.py metric.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Intra-op threads of each training process (the issue's runs: 2 CPU cores).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--outdir", default=os.path.join("training-runs", "background-sweep"), show_default=True,
              help="Datasets, runs, logs and per-cell records (OUTDIR/cells/*.json: what makes the sweep resumable).")
def main(families, backgrounds, kimg, backdrop, metric, threads, seed, outdir):
    from metrics import metric_main

    if not metric_main.is_valid_metric(metric):
        raise click.BadParameter(f"unknown metric {metric!r}; {metric_main.valid_metrics_message()}",
                                 param_hint="--metric")
    outdir = os.path.abspath(outdir)
    records = [run_cell(family, background, backdrop, kimg, outdir, metric, threads, seed)
               for family in families for background in backgrounds]
    click.echo("\n" + table(records, metric))
    path = write_results("background_sweep", {
        "commit": git_commit(), "load_average": os.getloadavg(), "metric": metric, "kimg": kimg,
        "backdrop_option": backdrop, "threads": threads, "seed": seed, "pass_ratio": PASS_RATIO, "cells": records})
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
