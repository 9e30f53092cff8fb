"""Seconds of the reconstruction training loss (MSE + 0.05 LPIPS-VGG, forward and backward) per step.

Not a test: run `python bench/lpips_loss.py` (options: --help). It times the loss of one render (a base training
step) and of a coarse and a fine render of the same targets (a step with densification), by default at the
official RealEstate10K shape (2 scenes x 4 targets of 256x256). With --code DIR another checkout (e.g.
`git archive HEAD~1 | tar -x -C /tmp/before`) is measured too, in subprocesses that alternate with this
checkout's, so both see the same machine load: the "before" of a change, in the same run. Each measurement runs
in its own process at --threads threads. Writes bench/results/lpips_loss-<timestamp>.json.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import click

THIS_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(repo: str, batch: int, targets: int, size: int, renders: int, repeats: int, threads: int) -> dict:
    """Median seconds of `renders` losses of one target batch (forward + backward), with the code in `repo`."""
    import time

    sys.path.insert(0, repo)
    import torch

    from reconstruction.loss import ReconstructionLoss

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(batch, targets, 3, size, size, generator=gen)
    noise = [0.1 * torch.randn(target.shape, generator=gen) for _ in range(renders)]
    loss = ReconstructionLoss(lpips_weight=0.05)

    def step() -> float:
        preds = {f"render{i}": (target + n).requires_grad_(True) for i, n in enumerate(noise)}
        start = time.perf_counter()
        if hasattr(loss, "terms"):
            total = sum(t["total"] for t in loss.terms(preds, target, 0).values())
        else:  # code from before ReconstructionLoss.terms: one call per render
            total = sum(loss(p, target, 0)["total"] for p in preds.values())
        total.backward()
        return time.perf_counter() - start

    step()  # warm-up: weights, first-call allocations
    times = [step() for _ in range(repeats)]
    return {"code": repo, "renders": renders, "sec_median": statistics.median(times),
            "sec_all": [round(t, 4) for t in times]}


def _subprocess(repo: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--json-only", "--code", repo, *args],
                          capture_output=True, text=True, cwd=repo)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise click.ClickException(f"measuring {repo} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[0][len("RESULT "):])


@click.command()
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="Scenes per step.")
@click.option("--targets", type=click.IntRange(min=1), default=4, show_default=True, help="Target views per scene.")
@click.option("--size", type=click.IntRange(min=32), default=256, show_default=True, help="Target image size.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed steps per process.")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Alternating processes per checkout and render count.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--code", default=None, metavar="DIR", help="Also measure this checkout (the code before).")
@click.option("--renders", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--json-only", is_flag=True, hidden=True, help="One measurement, printed as JSON (subprocesses).")
def main(batch, targets, size, repeats, rounds, threads, code, renders, json_only):
    if json_only:
        click.echo("RESULT " + json.dumps(measure(code, batch, targets, size, renders, repeats, threads)))
        return
    if code is not None and not os.path.isfile(os.path.join(code, "reconstruction", "loss.py")):
        raise click.BadParameter(f"{code!r} is not a gsgan checkout (no reconstruction/loss.py)", param_hint="--code")
    repos = {"current": THIS_REPO, **({"before": os.path.abspath(code)} if code else {})}
    common = ["--batch", str(batch), "--targets", str(targets), "--size", str(size), "--repeats", str(repeats),
              "--threads", str(threads)]
    runs: dict[str, dict[int, list[float]]] = {name: {1: [], 2: []} for name in repos}
    for _ in range(rounds):
        for count in (1, 2):
            for name, repo in repos.items():
                result = _subprocess(repo, common + ["--renders", str(count)])
                runs[name][count] += result["sec_all"]
                click.echo(f"[bench] {name:<8} {count} render(s): {result['sec_median']:.3f} s", err=True)
    from _results import git_commit, write_results  # not at the top: it puts this checkout first on sys.path

    medians = {name: {count: statistics.median(t) for count, t in by_count.items()} for name, by_count in runs.items()}
    click.echo(f"loss of {batch} x {targets} targets at {size}x{size}, MSE + 0.05 LPIPS-VGG, forward + backward, "
               f"{threads} thread(s), median s per step")
    click.echo(f"{'code':<8} {'1 render':>9} {'coarse+fine':>12}")
    for name, m in medians.items():
        click.echo(f"{name:<8} {m[1]:>9.3f} {m[2]:>12.3f}")
    payload = {"benchmark": "lpips_loss", "batch": batch, "targets": targets, "size": size, "threads": threads,
               "repeats": repeats, "rounds": rounds, "median_sec": medians, "all_sec": runs,
               "load_average_end": os.getloadavg(), "git_commit": git_commit()}
    if "before" in medians:
        payload["speedup"] = {count: medians["before"][count] / medians["current"][count] for count in (1, 2)}
        click.echo(f"speed-up: {payload['speedup'][1]:.2f}x (1 render), {payload['speedup'][2]:.2f}x (coarse+fine)")
    click.echo(f"wrote {write_results('lpips_loss', payload)}")


if __name__ == "__main__":
    main()
