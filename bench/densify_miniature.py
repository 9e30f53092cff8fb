"""Generative densification in miniature: does the densifier beat more training of the base, at equal wall time?

    python bench/densify_miniature.py --base RUN/network-snapshot-000989.pt --data datasets/scenes64 \
        [--steps-a 1000] [--k-num 1024] [--densify-arg KEY=VALUE ...] [--target-resolution 128] [--seeds 0-2] \
        [--batch-a 4] [--batch-b 2] [--freeze-encoder-b] [--encoder-first 0.5]

The protocol, on the built-in scenes' test split (scenes never seen in training):
  1. calibrate: a trainer of the base alone and one of base + densifier (the very `reconstruct.py train`
     trainers, from BASE) take training steps in turn in one process, so both see the same machine load; the
     medians give t_a and t_b, seconds per step, at the threads each run will get (--threads: one per run
     when they run side by side, so calibration and runs see the same compute);
  2. continue from BASE for the same wall time: (a) the base alone for N_a = --steps-a steps, (b) base +
     densifier (`--densify --resume BASE`, a fine-tune) for N_b = round(N_a t_a / t_b) steps. Step counts rather
     than a clock keep both runs deterministic whatever else the machine runs meanwhile, so they run side by
     side (--parallel, the default) without changing what they compute;
     `--freeze-encoder-b` keeps (b)'s encoder fixed; `--encoder-first F` makes (b) a chain: its encoder alone
     for F N_a steps (as (a)), then the densifier from that run for the rest of the time, (1 - F) N_a t_a / t_b
     steps;
  3. `reconstruct.py test` of both final snapshots on the dataset's evaluation index: PSNR / SSIM / LPIPS of (a)
     and of (b)'s fine and coarse renders, Gaussian counts and seconds per scene.
  4. with several --seeds, steps 2-3 once per seed (data order, initialization and the densifier's random draws;
     the calibration of step 1 is shared), then the mean, min and max of the margins: on the built-in scenes one
     run's margin moves by up to 0.18 dB with the seed.
Prints one table per seed and writes bench/results/densify-miniature-<timestamp>.json (git commit, load average, every
figure). The runs' own logs are in --outdir. `--target-resolution HxW` trains both runs on, and scores both on,
target views of that size (the contexts keep the preset's size).
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import click

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)
from gen_videos import IntList  # noqa: E402
from reconstruct import ShapeType  # noqa: E402

RECONSTRUCT = os.path.join(REPO_ROOT, "reconstruct.py")


def train_args(base: str, data: str, outdir: str, steps: int, densify: bool, k_num: int | None,
               densify_args: tuple, seed: int, densify_lr: float | None = None,
               target_resolution: tuple[int, int] | None = None, densify_eps: float | None = None,
               batch: int | None = None, freeze_encoder: bool = False, desc: str | None = None) -> list[str]:
    """`reconstruct.py train` arguments of run (a) (densify=False) or (b); batch: scenes per step [the preset's];
    desc: the run directory's suffix [a-base / b-densify]."""
    args = ["--experiment=scenes", f"--data={data}", f"--outdir={outdir}", f"--steps={steps}", "--gap-warmup=0",
            f"--seed={seed}", "--snapshot-ticks=0", *target_args(target_resolution)]
    if batch is not None:
        args.append(f"--batch={batch}")
    if not densify:
        return args + [f"--init={base}", f"--desc={desc or 'a-base'}"]
    args += ["--densify", f"--resume={base}", f"--desc={desc or 'b-densify'}"]
    if k_num is not None:
        args.append(f"--k-num={k_num}")
    if densify_lr is not None:
        args.append(f"--densify-lr={densify_lr}")
    if densify_eps is not None:
        args.append(f"--densify-eps={densify_eps}")
    if freeze_encoder:
        args.append("--freeze-encoder")
    return args + [f"--densify-arg={item}" for item in densify_args]


def target_args(target_resolution: tuple[int, int] | None) -> list[str]:
    """The --target-resolution argument of `reconstruct.py train` and `test` (none: the preset's size)."""
    return [] if target_resolution is None else [f"--target-resolution={target_resolution[0]}x{target_resolution[1]}"]


def _trainer(args: list[str], run_dir: str):
    import torch

    import reconstruct
    from reconstruction.loop import ReconTrainer

    with reconstruct.train.make_context("train", list(args) + ["--workers=0"]) as ctx:
        options = reconstruct.build_train_options(ctx.params)
    os.makedirs(run_dir)
    trainer = ReconTrainer(options, run_dir, 0, 1, torch.device("cpu"))
    trainer.setup()
    return trainer


def calibrate(args_a: list[str], args_b: list[str], repeats: int, threads: int) -> dict:
    """Median seconds per training step of trainers (a) and (b), their steps interleaved, at `threads` CPU
    threads (the threads each run then gets)."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: _trainer(args, os.path.join(tmp, name)) for name, args in (("a", args_a), ("b", args_b))}
        times = {"a": [], "b": []}
        for i in range(repeats + 1):  # the first step of each is a warm-up
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step(None)
                if i:
                    times[name].append(time.perf_counter() - start)
    return {"t_a": statistics.median(times["a"]), "t_b": statistics.median(times["b"]), "repeats": repeats,
            "threads": threads}


def _latest_run(outdir: str, desc: str) -> str:
    runs = sorted(d for d in os.listdir(outdir) if d.endswith(desc))
    if not runs:
        raise click.ClickException(f"{outdir}: no run directory ending in {desc!r} (see its log)")
    return os.path.join(outdir, runs[-1])


def _summary(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise click.ClickException(f"reconstruct.py test printed no summary:\n{output[-2000:]}")


@click.command()
@click.option("--base", required=True, metavar="PT", help="Snapshot of a base run (no densification).")
@click.option("--data", required=True, metavar="DIR", help="The built-in scenes (dataset_tool.py scenes).")
@click.option("--outdir", default=None, metavar="DIR", help="Where the two runs go [a fresh temporary folder].")
@click.option("--steps-a", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Steps of run (a); run (b) gets the steps that take the same time.")
@click.option("--k-num", type=click.IntRange(min=1), default=None, help="Densified Gaussians per view [preset].")
@click.option("--densify-arg", "densify_args", multiple=True, metavar="KEY=VALUE", help="Densifier override.")
@click.option("--densify-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate of (b)'s fresh densifier [the encoder's].")
@click.option("--densify-eps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam epsilon of (b)'s densifier [reconstruct.py train's default].")
@click.option("--batch-a", type=click.IntRange(min=1), default=None, help="Scenes per step of run (a) [preset: 4].")
@click.option("--batch-b", type=click.IntRange(min=1), default=None,
              help="Scenes per step of run (b) [preset: 4]; its steps still take (a)'s wall time.")
@click.option("--freeze-encoder-b", is_flag=True,
              help="Run (b) with --freeze-encoder: the base's encoder fixed, the densifier trained alone.")
@click.option("--encoder-first", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="(b) spends this fraction of the time training the encoder alone, as (a) does, then the rest "
                   "with the densifier, resumed from that snapshot (with --freeze-encoder-b: a staged fine-tune).")
@click.option("--calibration-steps", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--parallel/--sequential", default=True, show_default=True, help="Run (a) and (b) side by side.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of each run and of the calibration [1 with --parallel, else all cores].")
@click.option("--seeds", type=IntList("seed", maximum=2**31 - 1, max_count=16), default="0", show_default=True,
              help="e.g. 0-2: one (a)/(b) pair per seed, one after the other, and the mean margin.")
@click.option("--target-resolution", type=ShapeType(), default=None,
              help="Train and score both runs on target views of this size, H or HxW [the contexts' size].")
def main(base, data, outdir, steps_a, k_num, densify_args, densify_lr, densify_eps, batch_a, batch_b,
         freeze_encoder_b, encoder_first, calibration_steps, parallel, threads, seeds, target_resolution):
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"each seed once, got {','.join(map(str, seeds))}", param_hint="--seeds")
    outdir = os.path.abspath(outdir or tempfile.mkdtemp(prefix="densify-miniature-"))
    os.makedirs(outdir, exist_ok=True)
    data, base = os.path.abspath(data), os.path.abspath(base)
    load_before = os.getloadavg()
    threads = threads or (1 if parallel else max(1, os.cpu_count() or 1))

    def args_of(seed: int, run_dir: str, densify: bool, steps: int, start: str = base,
                desc: str | None = None) -> list[str]:
        return train_args(start, data, run_dir, steps, densify, k_num, densify_args, seed, densify_lr=densify_lr,
                          target_resolution=target_resolution, densify_eps=densify_eps,
                          batch=batch_b if densify else batch_a, freeze_encoder=densify and freeze_encoder_b,
                          desc=desc)

    click.echo("calibrating: training steps of (a) and (b) in turn ...")
    cal = calibrate(args_of(seeds[0], outdir, False, steps_a), args_of(seeds[0], outdir, True, steps_a),
                    calibration_steps, threads)
    encoder_steps = round(encoder_first * steps_a)  # (b)'s encoder-only steps, each as dear as one of (a)
    steps_b = max(1, round((steps_a - encoder_steps) * cal["t_a"] / cal["t_b"]))
    first = f"{encoder_steps} encoder-only + " if encoder_steps else ""
    click.echo(f"t_a {cal['t_a']:.3f} s/step, t_b {cal['t_b']:.3f} s/step at {threads} thread(s) (ratio "
               f"{cal['t_b'] / cal['t_a']:.2f}): (a) {steps_a} steps, (b) {first}{steps_b} steps = "
               f"{steps_a * cal['t_a'] / 60:.1f} min each at these step times, per seed")

    def plan_b(seed: int, run_dir: str) -> list[list[str]]:
        if not encoder_steps:
            return [args_of(seed, run_dir, True, steps_b)]
        return [args_of(seed, run_dir, False, encoder_steps, desc="b-encoder"),
                args_of(seed, run_dir, True, steps_b, start=PREVIOUS_RUN)]
    runs = []
    for seed in seeds:
        # One seed alone keeps the layout of earlier results (runs directly in --outdir).
        run_dir = outdir if len(seeds) == 1 else os.path.join(outdir, f"seed{seed}")
        os.makedirs(run_dir, exist_ok=True)
        a, b, wall = run_pair({"a": [args_of(seed, run_dir, False, steps_a)], "b": plan_b(seed, run_dir)},
                              run_dir, data, parallel, threads, target_resolution)
        runs.append({"seed": seed, "a": a, "b": b, "wall_seconds_both_runs": wall,
                     "fine_minus_a_db": b["psnr"] - a["psnr"], "fine_minus_coarse_db": b["psnr"] - b["coarse_psnr"]})
        print_pair(base, seed, steps_a, f"{first}{steps_b}", a, b, batch_a, batch_b)
    margins = summarize_margins(runs)
    if len(runs) > 1:
        click.echo(f"\nover {len(runs)} seeds: (b) fine - (a) mean {margins['fine_minus_a_db_mean']:+.2f} dB "
                   f"(min {margins['fine_minus_a_db_min']:+.2f}, max {margins['fine_minus_a_db_max']:+.2f}); "
                   f"(b) fine - coarse mean {margins['fine_minus_coarse_db_mean']:+.2f} dB")
    payload = {"kind": "densify-miniature", "git_commit": git_commit(), "base": base, "data": data,
               "k_num": k_num, "densify_args": list(densify_args), "densify_lr": densify_lr,
               "densify_eps": densify_eps, "batch_a": batch_a, "batch_b": batch_b,
               "freeze_encoder_b": freeze_encoder_b, "encoder_first": encoder_first,
               "encoder_steps_b": encoder_steps, "calibration": cal,
               "target_resolution": None if target_resolution is None else list(target_resolution),
               "steps_a": steps_a, "steps_b": steps_b, "parallel": parallel, "threads": threads, "seeds": seeds,
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "runs": runs, **margins}
    click.echo(f"results: {write_results('densify-miniature', payload)}")


PREVIOUS_RUN = "<previous run>"  # in a chain's arguments: the run directory the chain's previous stage wrote


def _desc(args: list[str]) -> str:
    return next(arg.split("=", 1)[1] for arg in args if arg.startswith("--desc="))


def _train_chain(name: str, stages: list[list[str]], run_dir: str, env: dict) -> None:
    """One run's `reconstruct.py train` stages, in order, logged to RUN_DIR/NAME.log; a stage's PREVIOUS_RUN
    arguments name the previous stage's run directory."""
    previous = None
    with open(os.path.join(run_dir, f"{name}.log"), "w") as log:
        for args in stages:
            args = [arg.replace(PREVIOUS_RUN, previous) for arg in args] if previous else args
            command = [sys.executable, RECONSTRUCT, "train", *args]
            click.echo(f"({name}) {shlex.join(command)}")
            log.flush()
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env).returncode:
                raise click.ClickException(f"run ({name}) failed: see {log.name}")
            previous = _latest_run(run_dir, _desc(args))


def run_pair(plans: dict[str, list[list[str]]], run_dir: str, data: str, parallel: bool, threads: int,
             target_resolution) -> tuple[dict, dict, float]:
    """Train (a) and (b) (side by side with `parallel`; each a chain of `train` stages), then test both:
    (summary a, summary b, wall seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.time()
    with ThreadPoolExecutor(max_workers=2 if parallel else 1) as pool:
        futures = [pool.submit(_train_chain, name, plans[name], run_dir, env) for name in ("a", "b")]
        for future in futures:
            future.result()
    wall = time.time() - started
    results = {}
    for name, desc in (("a", "a-base"), ("b", "b-densify")):
        run = _latest_run(run_dir, desc)
        done = subprocess.run([sys.executable, RECONSTRUCT, "test", f"--network={run}", f"--data={data}",
                               *target_args(target_resolution)], capture_output=True, text=True, cwd=REPO_ROOT)
        if done.returncode != 0:
            raise click.ClickException(f"test of {run} failed:\n{(done.stdout + done.stderr)[-2000:]}")
        results[name] = _summary(done.stdout)
        results[name]["run_dir"] = run
    return results["a"], results["b"], wall


def print_pair(base: str, seed: int, steps_a: int, steps_b, a: dict, b: dict, batch_a: int | None = None,
               batch_b: int | None = None) -> None:
    rows = [("(a) base alone", a["psnr"], a["ssim"], a["lpips"], a["gaussians_per_scene"], a["seconds_per_scene"]),
            ("(b) fine", b["psnr"], b["ssim"], b["lpips"], b["gaussians_per_scene"], b["seconds_per_scene"]),
            ("(b) coarse", b["coarse_psnr"], b["coarse_ssim"], b["coarse_lpips"], b["coarse_gaussians_per_scene"],
             None)]
    scenes = {name: "" if n is None else f" of {n} scenes" for name, n in (("a", batch_a), ("b", batch_b))}
    click.echo(f"\nbase {base}, seed {seed}\n(a) {steps_a} steps{scenes['a']}, (b) {steps_b} steps{scenes['b']}; "
               f"test split, {a['num_scenes']} scenes; contexts {a.get('image_shape')}, targets {a.get('target_shape')}")
    click.echo(f"{'':16}{'PSNR':>8}{'SSIM':>8}{'LPIPS':>8}{'Gaussians':>11}{'s/scene':>9}")
    for label, psnr, ssim, lpips, count, seconds in rows:
        sec = f"{seconds:9.3f}" if seconds is not None else f"{'':9}"
        click.echo(f"{label:16}{psnr:8.2f}{ssim:8.3f}{lpips:8.3f}{count:11,.0f}{sec}")
    click.echo(f"(b) fine - (a): {b['psnr'] - a['psnr']:+.2f} dB; (b) fine - coarse: "
               f"{b['psnr'] - b['coarse_psnr']:+.2f} dB")


def summarize_margins(runs: list[dict]) -> dict:
    """Mean, min and max over the seeds of both margins: one seed's margin moves by up to 0.18 dB with the seed
    on the built-in scenes, so a claim about the method needs the mean."""
    out = {}
    for key in ("fine_minus_a_db", "fine_minus_coarse_db"):
        values = [run[key] for run in runs]
        out.update({f"{key}_mean": statistics.fmean(values), f"{key}_min": min(values), f"{key}_max": max(values)})
    return out


if __name__ == "__main__":
    main()
