"""python -m viewer FILE.ply [--port 8000] [--frame opencv|eg3d] [--no-browser]"""
import click

from viewer.server import FRAMES, serve


@click.command()
@click.argument("ply", type=click.Path(exists=True, dir_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port")
@click.option("--frame", type=click.Choice(FRAMES), default="opencv", show_default=True,
              help="world frame of the file: opencv (y down; what gen_videos exports) or eg3d (y up)")
@click.option("--browser/--no-browser", default=True, show_default=True, help="open the page in the default browser")
def main(ply, port, frame, browser):
    """Serve an interactive WebGL view of a splat .ply on 127.0.0.1 (nothing is loaded from the internet)."""
    raise SystemExit(serve(ply, port=port, frame=frame, open_browser=browser))


if __name__ == "__main__":
    main()
