"""torch.distributed helpers: set-up/tear-down, rank queries, gradient all-reduce and a differentiable all-gather.

Every helper also works in a single process without torch.distributed (world size 1), which is how tests and
single-GPU/CPU training run. Backend: NCCL for CUDA, Gloo for CPU.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def launched_by_torchrun() -> bool:
    """True when RANK / WORLD_SIZE / LOCAL_RANK are set (torchrun, or any launcher following its convention)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def torchrun_ranks() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment variables."""
    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])


def backend_for(device: torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init(rank: int, world_size: int, device: torch.device, init_method: str | None = None) -> None:
    """Join the process group (no-op for world_size 1). init_method None means env:// (torchrun)."""
    if world_size <= 1 or is_initialized():
        return
    kwargs = {"backend": backend_for(device), "rank": rank, "world_size": world_size,
              "init_method": init_method or "env://"}
    if torch.device(device).type == "cuda":
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group(**kwargs)


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """In-place sum over ranks (identity in one process)."""
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    if get_world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank src's parameters and buffers to every rank (so all ranks start identical)."""
    if get_world_size() <= 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.numel() > 0:
            dist.broadcast(tensor.data, src=src)


def all_gather_objects(obj) -> list:
    """Picklable objects from every rank (rank order); [obj] in one process. Only for small, trusted data."""
    if get_world_size() <= 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter], extra: Tensor) -> tuple[Tensor, Tensor]:
    """Average .grad over ranks with one flattened all-reduce. Returns (extra summed over ranks, all_finite).

    `extra` (a small float vector, e.g. fault/stop flags) travels in the same all-reduce and is summed.
    all_finite is a bool tensor: every reduced gradient is finite (NaN/inf on any rank propagates through the
    sum, so all ranks agree). Non-finite values are NOT replaced here; see replace_nonfinite_.
    """
    params = [p for p in params if p.grad is not None and p.numel() > 0]
    pieces = [p.grad.reshape(-1) for p in params]
    device = pieces[0].device if pieces else extra.device
    dtype = pieces[0].dtype if pieces else torch.float32
    flat = torch.cat(pieces + [extra.reshape(-1).to(device=device, dtype=dtype)])
    n_grads = flat.numel() - extra.numel()
    if get_world_size() > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat[:n_grads].div_(get_world_size())
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()
    return flat[n_grads:], torch.isfinite(flat[:n_grads]).all()


@torch.no_grad()
def replace_nonfinite_(params: Iterable[torch.nn.Parameter]) -> None:
    """NaN -> 0, +inf -> 1e5, -inf -> -1e5 in every gradient (docs/official-release.md, after the all-reduce)."""
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the gradient of its own slice.

    sum_grads=True: the gradients of the slice from every rank's copy of the loss are summed (all-reduce), so the
    gradient is exact for a loss every rank computes on the gathered batch. sum_grads=False keeps only the local
    copy's gradient, which reproduces the official GatherLayer (effective weight 1/world size, docs/official-release.md).
    """

    @staticmethod
    def forward(ctx, x: Tensor, sum_grads: bool) -> Tensor:
        ctx.sum_grads = sum_grads
        ctx.batch = x.shape[0]
        chunks = [torch.empty_like(x) for _ in range(get_world_size())]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        if ctx.sum_grads:
            grad = grad.clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rank = get_rank()
        return grad[rank * ctx.batch:(rank + 1) * ctx.batch], None


def all_gather_with_grad(x: Tensor, sum_grads: bool = True) -> Tensor:
    """Concatenate x [b, ...] from all ranks along dim 0 ([world*b, ...]); differentiable; identity in one process."""
    if get_world_size() <= 1:
        return x
    return _GatherWithGrad.apply(x, sum_grads)


# The project's errors that are the user's to fix (the training CLIs print them as one line), as "module:Class"
# of the defining module: a spawned rank that meets one hands it to the parent, which raises it as it is instead
# of torch.multiprocessing's traceback. Matched by name through the class hierarchy (subclasses count), so that
# neither training loop is imported here.
USER_ERROR_CLASSES = frozenset({
    "training.dataset:DatasetError", "training.config:ConfigError", "training.output_paths:OutputPathError",
    "torch_utils.checkpoint:SnapshotError",
    "reconstruction.chunks:ChunkError", "reconstruction.densify.segment:DensifyError",
    "reconstruction.encoder.errors:EncoderError", "reconstruction.evaluate:EvaluationError",
    "reconstruction.metrics:ImageMetricError", "reconstruction.view_sampler:ViewSamplerError",
    "reconstruction.lpips:LPIPSWeightsError",
})
# Seconds the other ranks get to notice a failed peer and exit on their own before they are terminated.
SPAWN_FAILURE_GRACE_S = 10.0


def is_user_error(error: BaseException) -> bool:
    """True when `error` is (a subclass of) one of USER_ERROR_CLASSES."""
    return any(f"{cls.__module__}:{cls.__qualname__}" in USER_ERROR_CLASSES for cls in type(error).__mro__)


def _picklable(error: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001  whatever an exotic exception does, it then travels as a traceback
        return False
    return True


def _spawn_entry(index: int, fn, init_method: str, args: tuple, queue) -> None:
    """One spawned rank: ("result", value) to the parent, or ("error", exception) for a user error, after which
    the rank exits with status 1 so that the parent stops the others."""
    try:
        result = fn(index, init_method, *args)
    except Exception as error:  # noqa: BLE001  only user errors are handled; the rest keeps its traceback
        if not (is_user_error(error) and _picklable(error)):
            raise
        queue.put((index, "error", error))
        raise SystemExit(1) from None
    queue.put((index, "result", result))


def spawn(fn, nprocs: int, args: tuple = ()) -> list:
    """Run fn(index, init_method, *args) in nprocs fresh processes (spawn); returns their results by index.

    init_method is a file:// rendezvous for init(). SIGTERM to this process is forwarded to the children (which
    finish their step, snapshot and exit); SIGINT reaches them from the terminal directly.
    A user error in a rank (is_user_error) is raised here as it is, the first one to arrive, once every rank
    has ended; any other failure raises torch.multiprocessing's ProcessException with the rank's traceback.
    """
    import signal
    import tempfile

    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        init_method = f"file://{os.path.join(tmp, 'rendezvous')}"
        context = mp.start_processes(_spawn_entry, args=(fn, init_method, args, queue), nprocs=nprocs,
                                     join=False, start_method="spawn")

        def forward(signum, _frame):
            for pid in context.pids():
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                    signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: None)}
        try:
            while not context.join(grace_period=SPAWN_FAILURE_GRACE_S):
                pass
        except (mp.ProcessExitedException, mp.ProcessRaisedException):
            errors = [value for _, kind, value in _drain(queue) if kind == "error"]
            if errors:
                raise errors[0] from None
            raise
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
    results = {index: value for index, _, value in _drain(queue)}
    return [results[i] for i in range(nprocs)]


def _drain(queue) -> list:
    """Everything the ranks put on the queue, in arrival order (all of them have ended: nothing more comes)."""
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items
