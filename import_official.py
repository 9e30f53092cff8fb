"""Convert an official GSGAN network pickle (network-snapshot-*.pkl) into a gsgan snapshot, safely.

The official pickles embed Python source that a normal unpickle would execute; this tool reads them without running
any of it (training/official_pickle.py, training/official_import.py) and writes a normal gsgan snapshot (compat mode)
for gen_videos.py (videos, stills, .ply files for the viewer) and calc_metrics.py, whose `--network` also accepts the
.pkl directly (converted in memory each time).

Examples:

\b
  python import_official.py --source ffhq512-network-snapshot.pkl --dest checkpoints/ffhq512.pt
  python import_official.py --source afhq512-network-snapshot.pkl --dest checkpoints/afhq512.pt --dry-run
\b
  python gen_videos.py --network checkpoints/ffhq512.pt --seeds 0-3 --grid 2x2 --trunc 0.7 --trunc-cutoff 14 \\
      --outdir out/

The destination is written under a temporary name and renamed at the end: a failure leaves no partial file.
"""
from __future__ import annotations

import os

import click

from training.output_paths import OutputPathError, check_output_file, make_output_dir, remove_empty


def check_dest(dest: str, overwrite: bool) -> None:
    """Refuse before any work: not a .pt path, an existing file without --overwrite, or an unwritable place."""
    if not dest.lower().endswith(".pt"):
        raise click.ClickException(f"--dest: expected a .pt path, got {dest}")
    if os.path.exists(dest) and not os.path.isdir(dest) and not overwrite:
        raise click.ClickException(f"--dest: {dest} already exists (pass --overwrite to replace it)")
    try:
        check_output_file(dest, "--dest")
    except OutputPathError as error:
        raise click.ClickException(str(error)) from None


@click.command(help=__doc__)
@click.option("--source", required=True, metavar="PKL", help="official network pickle (network-snapshot-*.pkl)")
@click.option("--dest", metavar="PT", help="gsgan snapshot to write (.pt); not needed with --dry-run")
@click.option("--overwrite", is_flag=True, help="replace an existing --dest")
@click.option("--dry-run", is_flag=True, help="convert in memory and report what would be written; write nothing")
@click.option("--verbose", "-v", is_flag=True, help="also list every dropped key and every checked constant")
def main(source, dest, overwrite, dry_run, verbose):
    from torch_utils.checkpoint import SnapshotError, atomic_torch_save
    from training.official_import import import_network_pickle

    if dest is None and not dry_run:
        raise click.ClickException("--dest is required (or pass --dry-run)")
    if dest is not None:
        check_dest(dest, overwrite)
    if not os.path.isfile(source):
        raise click.ClickException(f"--source: {source} is not a file")
    try:
        result = import_network_pickle(source)
    except SnapshotError as error:
        raise click.ClickException(str(error)) from None
    G = result.snapshot["G_ema"]["init_kwargs"]
    click.echo(f"{source}: GSGAN generator, {G['img_resolution']}x{G['img_resolution']}, res_end {G['res_end']}, "
               f"{G['num_points']} initial points, cfg {result.snapshot['options']['cfg']}, compat mode")
    for line in result.summary_lines() + (result.detail_lines() if verbose else []):
        click.echo("  " + line)
    if dry_run:
        click.echo(f"dry run: would write {dest}" if dest else "dry run: nothing written")
        return
    created = make_output_dir(os.path.dirname(dest) or ".")
    try:
        atomic_torch_save(result.snapshot, dest)
    except OSError as error:
        remove_empty(created)
        raise click.ClickException(f"--dest: cannot write {dest} ({error.strerror or error})") from None
    click.echo(f"wrote {dest}")


if __name__ == "__main__":
    main()  # pylint: disable=no-value-for-parameter
