"""Where a reconstruction's error lives in frequency: blur (missing power) or misplaced detail?

    python bench/render_spectrum.py --network RUN/network-snapshot-001000.pt --data datasets/scenes64 [--limit 40]

On the test split's evaluation index, for every target view: the 2D power spectrum (Hann-windowed, mean removed) of
the ground truth, of the render, and of their difference, summed over views in bands of max(|fx|, |fy|) in cycles
per pixel. Prints, per band, the render's power relative to the ground truth's (1 = as sharp; below 1 = blurred)
and the band's share of the error's power. A snapshot trained with generative densification is measured twice: its
fine render (the method) and its coarse one. Writes bench/results/render-spectrum-<timestamp>.json.

Why: a per-pixel Gaussian render is low-pass filtered (the Gaussians' own footprint plus the rasterizer's
0.3 px^2 dilation). This shows how much of the error a finer representation could remove at all, and whether the
fine render is actually sharper than the coarse one. Also printed: the Gaussians' footprint in the first context
view before the rasterizer's dilation (the largest scale x focal length / depth, in pixels; quantiles 10/50/90 %).
"""
from __future__ import annotations

import os
import sys

import click

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from _results import git_commit, write_results  # noqa: E402  (bench/ is the script's directory)

BAND_EDGES = (0.0, 0.0625, 0.125, 0.25, 0.375, 0.5)  # cycles per pixel; the last band ends at Nyquist (0.5)


def band_power(images, edges=BAND_EDGES):
    """[N, 3, H, W] -> [bands] summed power of the Hann-windowed, mean-removed images per band of
    max(|fx|, |fy|); the Nyquist row/column (|f| = 0.5) belongs to the last band."""
    import torch

    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h, dtype=torch.float64).abs()[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64).abs()[None, :]
    radius = torch.maximum(fx.expand(h, w), fy.expand(h, w))
    window = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                         torch.hann_window(w, periodic=False, dtype=torch.float64))
    x = images.double()
    power = torch.fft.fft2((x - x.mean((-1, -2), keepdim=True)) * window).abs().square().sum((0, 1))
    out = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        mask = (radius >= lo) & ((radius < hi) if i < len(edges) - 2 else (radius <= hi))
        out.append(float(power[mask].sum()))
    return out


def footprint_px(gaussians, views):
    """[N] the largest axis of each Gaussian of scene 0, in pixels of its view 0 (scale * fx / depth), before the
    rasterizer's dilation; Gaussians behind the camera are left out. `views`: batched VIEWS (reconstruction.views)."""
    from reconstruction.geometry import project

    height, width = views["image"].shape[-2:]
    intrinsics, c2w = views["intrinsics"][0, 0], views["extrinsics"][0, 0]
    _, depth = project(gaussians.means[0], intrinsics, c2w, width, height)
    sigma = gaussians.log_scales[0].exp().amax(-1) * (intrinsics[0, 0] * width) / depth.clamp_min(1e-6)
    return sigma[depth > 0]


def measure(network: str, data: str, limit: int | None) -> dict:
    """Per-band sums over the test targets: ground truth, each render, each render's error."""
    import torch

    from reconstruct import load_network, view_options
    from reconstruction.dataset import EvaluationSet
    from reconstruction.evaluate import batched
    from reconstruction.view_sampler import EvaluationIndex
    from reconstruction.views import batch_to, select_views, to_cameras
    from splatting import render

    _, snapshot = load_network(network, "cpu")
    image_shape, target_shape, near, far = view_options(snapshot, None)
    index = EvaluationIndex(os.path.join(data, "evaluation_index.json"))
    dataset = EvaluationSet(data, "test", index, image_shape=image_shape, near=near, far=far,
                            target_shape=target_shape)
    encoder, densifier = snapshot["encoder"], snapshot.get("densifier")
    names = ["fine", "coarse"] if densifier is not None else ["render"]
    sums = {"ground_truth": [0.0] * (len(BAND_EDGES) - 1)}
    sums.update({f"{n}{suffix}": [0.0] * (len(BAND_EDGES) - 1) for n in names for suffix in ("", "_error")})
    footprints = {n: [] for n in names}
    count = len(dataset) if limit is None else min(limit, len(dataset))
    with torch.no_grad():
        for i in range(count):
            batch = batch_to(batched(dataset[i]), "cpu")
            context, cameras = select_views(batch["context"], slice(0, 2)), to_cameras(batch["target"])
            truth = batch["target"]["image"][0]
            out = encoder(context)
            renders = {"render" if densifier is None else "coarse": out.gaussians}
            if densifier is not None:
                renders["fine"] = densifier(context, out).gaussians
            sums["ground_truth"] = [s + v for s, v in zip(sums["ground_truth"], band_power(truth))]
            for name, gaussians in renders.items():
                footprints[name].append(footprint_px(gaussians, context))
                image = render(gaussians, cameras).color[0].clamp(0, 1)
                for key, value in ((name, band_power(image)), (f"{name}_error", band_power(image - truth))):
                    sums[key] = [s + v for s, v in zip(sums[key], value)]
    quantiles = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    footprint = {n: torch.cat(v).double().quantile(quantiles).tolist() for n, v in footprints.items()}
    return {"names": names, "sums": sums, "scenes": count, "footprint_px_q10_50_90": footprint,
            "image_shape": list(image_shape), "target_shape": list(target_shape)}


@click.command()
@click.option("--network", "networks", required=True, multiple=True, metavar="PT",
              help="Reconstruction snapshot (repeatable).")
@click.option("--data", required=True, metavar="DIR", help="Chunk dataset root with test/ and evaluation_index.json.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N test scenes.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [torch's default].")
def main(networks, data, limit, threads):
    import torch

    from reconstruct import user_errors

    if threads:
        torch.set_num_threads(threads)
    bands = [f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(BAND_EDGES[:-1], BAND_EDGES[1:])]
    results = {}
    for network in networks:
        try:
            result = measure(network, os.path.abspath(data), limit)
        except user_errors() as error:
            raise click.ClickException(str(error)) from None
        sums = result["sums"]
        click.echo(f"\n{network}: {result['scenes']} test scenes, contexts {result['image_shape']}, targets "
                   f"{result['target_shape']}")
        click.echo(f"{'band (cycles/px)':26}" + "".join(f"{b:>13}" for b in bands))
        ratios, shares = {}, {}
        for name in result["names"]:
            ratios[name] = [r / g if g > 0 else float("nan") for r, g in zip(sums[name], sums["ground_truth"])]
            total = sum(sums[f"{name}_error"])
            shares[name] = [e / total if total > 0 else float("nan") for e in sums[f"{name}_error"]]
            click.echo(f"{name + ' power / truth':26}" + "".join(f"{v:13.3f}" for v in ratios[name]))
        for name in result["names"]:
            click.echo(f"{name + ' error share':26}" + "".join(f"{v:13.3f}" for v in shares[name]))
        for name, (q10, q50, q90) in result["footprint_px_q10_50_90"].items():
            click.echo(f"{name} Gaussians' footprint in context view 0 (px, before dilation): 10 % {q10:.2f}, "
                       f"median {q50:.2f}, 90 % {q90:.2f}")
        results[network] = dict(result, power_ratio=ratios, error_share=shares)
    payload = {"kind": "render-spectrum", "git_commit": git_commit(), "data": os.path.abspath(data),
               "band_edges": list(BAND_EDGES), "threads": torch.get_num_threads(), "networks": results}
    click.echo(f"results: {write_results('render-spectrum', payload)}")


if __name__ == "__main__":
    main()
