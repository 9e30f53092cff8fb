"""Process-level plumbing both training loops (GAN and reconstruction) share: the device of a rank, DataLoader
workers that leave stop signals to the main process, and SIGINT / SIGTERM handlers that ask for a clean stop."""
from __future__ import annotations

import signal
import threading
from typing import Callable

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeviceUnavailable(RuntimeError):
    """--device cuda on a machine without a usable CUDA device."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'cuda', 'cpu' or 'auto' (CUDA when available) -> the device of local rank `local_rank`."""
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
