"""Reconstruction speed and memory: the CPU preset at 64x64 and the official `re10k` preset at 256x256, side by side.

Not a test: run `python bench/reconstruction.py` (options: --help). Every setup runs in its own fresh process, so
its peak memory is its own: on the CPU the "RSS+" figure is how far the measured work raised the process's peak
resident set size (ru_maxrss) above its peak just before (model built, data in memory; the runs include one
warm-up), and the process peak is reported too; on CUDA it is torch.cuda.max_memory_allocated. Scenes are
procedural rooms (reconstruction.synthetic_scenes, scene_raycast), rendered once.

- forward: encoder + rendering of the target views of one scene, no gradients (what `reconstruct.py test` does);
- train step: forward of a batch, MSE (+ LPIPS-VGG when the preset trains with it), backward, Adam step;
- the `+densify` setups add generative densification (reconstruction.densify) to the same encoder: the forward is
  encoder + densifier + rendering of the fine Gaussians at the target views, and its stages are timed apart
  (selection, decoder, fine render; CUDA synchronized before each timestamp); the small one's train step is the
  joint encoder + densifier step (loss on coarse and fine renders). The official re10k + densify setup runs one
  forward (it takes about a minute on 2 CPU cores) and reports its peak memory.
Writes bench/results/reconstruction-<timestamp>.json with the device, git commit and torch version.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time

import click

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)

# name -> (encoder preset, image size, context views, target views, train batch or None, LPIPS weight in training,
#          densifier preset or None)
SETUPS = {
    "small-64": ("small", 64, 2, 3, 4, 0.0, None),
    "re10k-256": ("re10k", 256, 2, 3, None, 0.05, None),
    "small-64+densify": ("small", 64, 2, 3, 4, 0.0, "small"),
    "re10k-256+densify": ("re10k", 256, 2, 3, None, 0.05, "re10k"),
}


def _scene_batch(size: int, num_context: int, num_target: int, batch: int, seed: int = 0) -> dict:
    """A batch in the layout of reconstruction/views.py from procedural scenes (contexts 12 frames apart)."""
    import numpy as np
    import torch

    from reconstruction import scene_raycast
    from reconstruction import synthetic_scenes as ss

    scenes = []
    for b in range(batch):
        rng = np.random.default_rng(seed + b)
        scene, path = ss.sample_scene(rng, 40, size, size)
        frames = [14, 26] + ([20] if num_context == 3 else [])
        frames = frames[:num_context] + list(np.linspace(15, 25, num_target).round().astype(int))
        images = [scene_raycast.render(scene, path.cam2world[f], path.intrinsics, size, size, supersample=1)
                  for f in frames]
        scenes.append((np.stack(images), path.cam2world[frames], np.repeat(path.intrinsics[None], len(frames), 0)))

    def views(part: slice) -> dict:
        image = torch.stack([torch.from_numpy(s[0][part]).permute(0, 3, 1, 2).float() / 255 for s in scenes])
        n = image.shape[1]
        return {"image": image, "extrinsics": torch.stack([torch.from_numpy(s[1][part]).float() for s in scenes]),
                "intrinsics": torch.stack([torch.from_numpy(s[2][part]).float() for s in scenes]),
                "near": torch.ones(batch, n), "far": torch.full((batch, n), 100.0),
                "index": torch.zeros(batch, n, dtype=torch.long)}
    return {"context": views(slice(0, num_context)), "target": views(slice(num_context, None))}


def _measure(setup: str, device_name: str, threads: int, repeats: int, queue) -> None:
    """Child process: build, warm up, time; put a result dict on the queue."""
    import torch

    from reconstruction.encoder import build_encoder
    from reconstruction.views import batch_to, to_cameras
    from splatting import render

    torch.set_num_threads(threads)
    preset, size, num_context, num_target, train_batch, lpips_weight, densify_preset = SETUPS[setup]
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    encoder = build_encoder(preset).to(device)
    params = sum(p.numel() for p in encoder.parameters())
    densifier = None
    if densify_preset is not None:
        from reconstruction.densify import build_densifier

        densifier = build_densifier(densify_preset, encoder.feature_dim).to(device)

    def peak_bytes() -> int:
        if cuda:
            return torch.cuda.max_memory_allocated(device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    parts: dict[str, list[float]] = {}  # densification stage timings of the timed forwards

    def forward(batch: dict, record: bool = False):
        out = encoder(batch["context"])
        if densifier is None:
            return out, render(out.gaussians, to_cameras(batch["target"])).color
        dense = densifier(batch["context"], out, profile=True)
        sync()
        start = time.perf_counter()
        image = render(dense.gaussians, to_cameras(batch["target"])).color
        sync()
        if record:
            for name in ("selection", "tokens", "decoder", "union", "total"):
                parts.setdefault(name, []).append(dense.timings[name])
            parts.setdefault("render", []).append(time.perf_counter() - start)
        return out, image

    result = {"setup": setup, "preset": preset, "resolution": size, "context_views": num_context,
              "target_views": num_target, "parameters": params,
              "gaussians_per_scene": encoder.gaussians_per_scene(num_context, size, size)}
    if densifier is not None:
        result.update(densify_preset=densify_preset, encoder_parameters=params,
                      densifier_parameters=sum(p.numel() for p in densifier.parameters()),
                      coarse_gaussians_per_scene=result["gaussians_per_scene"],
                      gaussians_per_scene=densifier.counts(num_context, size, size)["per_scene"])
        result["parameters"] = params + result["densifier_parameters"]
    one = batch_to(_scene_batch(size, num_context, num_target, 1), device)
    modules = [m for m in (encoder, densifier) if m is not None]
    for m in modules:
        m.eval()
    with torch.no_grad():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        base = 0 if cuda else peak_bytes()  # the peaks include a warm-up run (first-call allocations)
        forward(one)
        sync()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            forward(one, record=True)
            sync()
            times.append(time.perf_counter() - start)
    result["forward_sec_per_scene"] = statistics.median(times)
    result["forward_peak_mem_mb"] = (peak_bytes() - base) / 2**20
    if densifier is not None:
        result.update({f"densify_{name}_sec": statistics.median(values) for name, values in parts.items()})

    if train_batch is not None:
        from reconstruction.loss import ReconstructionLoss

        for m in modules:
            m.train()
        batch = batch_to(_scene_batch(size, num_context, num_target, train_batch, seed=100), device)
        loss_fn = ReconstructionLoss(lpips_weight=lpips_weight)
        trainable = [p for m in modules for p in m.parameters()]
        optimizer = torch.optim.Adam(trainable, lr=2e-4)
        generator = torch.Generator().manual_seed(0)

        def step():
            optimizer.zero_grad(set_to_none=True)
            gt, cameras = batch["target"]["image"], to_cameras(batch["target"])
            out = encoder(batch["context"])
            renders = {"coarse": render(out.gaussians, cameras).color}
            if densifier is not None:  # as reconstruction.loop: L(coarse) + L(fine)
                dense = densifier(batch["context"], out, generator=generator)
                renders["fine"] = render(dense.gaussians, cameras).color
            loss = sum(terms["total"] for terms in loss_fn.terms(renders, gt, step=0).values())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 0.5)
            optimizer.step()

        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        base = 0 if cuda else peak_bytes()
        step()
        sync()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        result.update(train_batch=train_batch, train_lpips_weight=lpips_weight,
                      train_sec_per_step=statistics.median(times),
                      train_peak_mem_mb=(peak_bytes() - base) / 2**20)
    result["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def run_isolated(setup: str, device: str, threads: int, repeats: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    process = ctx.Process(target=_measure, args=(setup, device, threads, repeats, queue))
    process.start()
    process.join()
    if process.exitcode != 0 or queue.empty():
        raise click.ClickException(f"setup {setup}: the measuring process failed (exit code {process.exitcode})")
    return queue.get()


@click.command()
@click.option("--setups", default=",".join(SETUPS), show_default=True, help="Comma-separated: " + ", ".join(SETUPS))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="CPU threads (torch.set_num_threads).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed runs per figure.")
def main(setups, device, threads, repeats):
    import torch

    names = [s.strip() for s in setups.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETUPS]
    if unknown or not names:
        raise click.BadParameter(f"unknown setup(s) {unknown}; valid: {', '.join(SETUPS)}", param_hint="--setups")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name in names:
        click.echo(f"[bench] {name} on {device} ...", err=True)
        rows.append(run_isolated(name, device, threads, repeats if SETUPS[name][0] == "small" else 1))
    mem = "GPU MB" if device == "cuda" else "RSS+ MB"
    click.echo(f"{'setup':<18} {'params':>11} {'Gaussians':>10} {'fwd s/scene':>12} {'fwd ' + mem:>11} "
               f"{'train s/step':>16} {'train ' + mem:>13} {'process peak RSS MB':>20} "
               f"{'densify select/decoder/render s':>32}")
    for r in rows:
        train = f"{r['train_sec_per_step']:.3f} (B={r['train_batch']})" if "train_sec_per_step" in r else "-"
        train_mem = f"{r['train_peak_mem_mb']:.0f}" if "train_peak_mem_mb" in r else "-"
        dense = (f"{r['densify_selection_sec']:.3f} / {r['densify_decoder_sec']:.3f} / {r['densify_render_sec']:.3f}"
                 if "densify_selection_sec" in r else "-")
        click.echo(f"{r['setup']:<18} {r['parameters']:>11,} {r['gaussians_per_scene']:>10,} "
                   f"{r['forward_sec_per_scene']:>12.3f} {r['forward_peak_mem_mb']:>11.0f} {train:>16} "
                   f"{train_mem:>13} {r['process_peak_rss_mb']:>20.0f} {dense:>32}")
    payload = {"benchmark": "reconstruction", "device": device,
               "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
               "threads": threads, "load_avg": os.getloadavg(), "results": rows, "git_commit": git_commit(),
               "torch": torch.__version__, "timestamp": datetime.datetime.now().isoformat(timespec="seconds")}
    click.echo(json.dumps(payload, indent=2))
    click.echo(f"wrote {write_results('reconstruction', payload)}")


if __name__ == "__main__":
    main()
