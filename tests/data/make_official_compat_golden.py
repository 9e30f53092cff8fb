"""Write tests/data/official_compat_golden.pt: fixed official-format weights of the tiny test generator and the
compat Gaussians gsgan computes from them through the importer, at fixed z / c.

Run once, and again only when a change of the compat math is intended:
    python tests/data/make_official_compat_golden.py
The test (tests/test_official_import.py::test_golden_compat_gaussians) rebuilds the pickle from the stored official
tensors, imports it and compares the Gaussians.
"""
from __future__ import annotations

import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.test_official_import import (GOLDEN, compat_gaussians, golden_inputs, official_state,  # noqa: E402
                                        tiny_generator, write_official_pickle)
from torch_utils import checkpoint  # noqa: E402
from torch_utils.checkpoint import atomic_torch_save  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    G = tiny_generator()
    torch.manual_seed(0)
    flat = official_state(G)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "golden.pkl")
        write_official_pickle(path, G=G, flat=flat)
        imported = checkpoint.load_snapshot(path)["G_ema"]
    z, c = golden_inputs()
    golden = {"official_state": flat, "z": z, "c": c, "gaussians": compat_gaussians(imported, z, c)}
    atomic_torch_save(golden, GOLDEN)
    print(f"wrote {GOLDEN} ({os.path.getsize(GOLDEN) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
