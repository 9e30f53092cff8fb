"""Training statistics: cheap `report(name, value)` anywhere, reduced across ranks once per tick, written as
stats.jsonl (and TensorBoard scalars when the `tensorboard` package is installed).

State lives in a StatsCollector object, never in module globals, so runs in one process do not share counters.
Names are namespaced: "Loss/G/adv", "Timing/sec_per_kimg", "Resources/peak_gpu_mem_gb", "Progress/kimg".
"""
from __future__ import annotations

import json
import math
import os
import time

import torch

from torch_utils import distributed


class StatsCollector:
    """Accumulates (count, sum, sum of squares) per name; report() never synchronises with the device."""

    def __init__(self):
        self._moments: dict[str, torch.Tensor] = {}

    def report(self, name: str, value) -> None:
        """Add every element of value (tensor, number or sequence) to the statistic `name`. NaNs are kept."""
        if isinstance(value, torch.Tensor):
            values = value.detach().reshape(-1).to(torch.float64)
        else:
            values = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        if values.numel() == 0:
            return
        moments = torch.stack([torch.ones((), dtype=torch.float64, device=values.device) * values.numel(),
                               values.sum(), values.square().sum()])
        previous = self._moments.get(name)
        if previous is None:
            self._moments[name] = moments
        else:
            self._moments[name] = previous + moments.to(previous.device)

    def names(self) -> list[str]:
        return sorted(self._moments)

    def collect(self, device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
        """{name: {"num", "mean", "std"}} over everything reported since the last collect, summed over ranks.

        Must be called by every rank (it all-reduces); names reported on only some ranks are handled.
        """
        names = sorted(set().union(*[set(n) for n in distributed.all_gather_objects(self.names())]))
        if not names:
            self._moments = {}
            return {}
        zero = torch.zeros(3, dtype=torch.float64)
        stacked = torch.stack([self._moments.get(name, zero).to("cpu") for name in names]).to(device)
        distributed.all_reduce_sum_(stacked)
        stacked = stacked.cpu()
        self._moments = {}
        result = {}
        for name, (count, total, total_sq) in zip(names, stacked.tolist()):
            mean = total / count if count else float("nan")
            var = max(total_sq / count - mean * mean, 0.0) if count else float("nan")
            result[name] = {"num": count, "mean": mean, "std": math.sqrt(var) if count else float("nan")}
        return result


def _json_number(value: float):
    """JSON has no NaN/inf: write them as strings so every line stays parseable by strict readers."""
    return value if math.isfinite(value) else str(value)


class StatsWriter:
    """Appends one JSON object per tick to run_dir/stats.jsonl; mirrors means to TensorBoard when available."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "stats.jsonl")
        self._file = open(self.path, "at", encoding="utf-8")
        self._tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the optional `tensorboard` package
            self._tensorboard = SummaryWriter(run_dir)
        except ImportError:
            pass

    def write(self, stats: dict[str, dict[str, float]], global_step_kimg: float, timestamp: float | None = None):
        record = {name: {key: _json_number(v) for key, v in entry.items()} for name, entry in sorted(stats.items())}
        record["timestamp"] = time.time() if timestamp is None else timestamp
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            step = int(global_step_kimg * 1000)
            for name, entry in stats.items():
                if math.isfinite(entry["mean"]):
                    self._tensorboard.add_scalar(name, entry["mean"], global_step=step, walltime=record["timestamp"])
            self._tensorboard.flush()

    def close(self):
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def format_tick_line(stats: dict[str, dict[str, float]]) -> str:
    """One console/log line per tick from collected stats (missing values print as nan)."""
    def get(name):
        return stats.get(name, {}).get("mean", float("nan"))
    total = get("Timing/total_sec")
    total = 0.0 if math.isnan(total) else total
    return (f"tick {int(get('Progress/tick')):<5d} kimg {get('Progress/kimg'):<9.3f} "
            f"time {int(total // 3600)}h{int(total % 3600 // 60):02d}m{int(total % 60):02d}s  "
            f"sec/tick {get('Timing/sec_per_tick'):<7.1f} sec/kimg {get('Timing/sec_per_kimg'):<8.2f} "
            f"maintenance {get('Timing/maintenance_sec'):<5.1f} cpumem {get('Resources/cpu_mem_gb'):.2f} "
            f"gpumem {get('Resources/peak_gpu_mem_gb'):.2f} augment {get('Progress/augment'):.3f}  "
            f"G {get('Loss/G/loss'):.3f} D {get('Loss/D/loss'):.3f}")
