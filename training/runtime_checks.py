"""The run-time rendering choices of the generator CLIs (gen_videos.py, calc_metrics.py), refused before any work.

`--backend` and `--dtype` are not stored in a snapshot: each command picks them for the machine it runs on, so each
must be usable on the chosen device before a snapshot is loaded or a metric started. One function, so both CLIs
refuse the same inputs with the same one-line message."""
from __future__ import annotations

import click


def check_runtime_choices(backend: str, dtype: str, device) -> tuple[str, str]:
    """(backend, dtype), unchanged, when usable on `device`; a rasterizer that is missing here or cannot render `device`
    tensors, or a bf16 that is not native on `device` (and not forced), is a click.BadParameter naming the option."""
    from training.generator import check_backend_usable
    from training.precision import PrecisionError, check_dtype_usable

    try:
        backend = check_backend_usable(backend, device)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--backend'") from None
    try:
        dtype = check_dtype_usable(dtype, device)
    except PrecisionError as error:
        raise click.BadParameter(str(error), param_hint="'--dtype'") from None
    return backend, dtype
