"""The `view` command, shared by `python -m viewer` and `python gen_videos.py view`."""
import click

from splatting.ply import PLY_FRAMES


@click.command("view")
@click.argument("ply", type=click.Path(exists=True, dir_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port")
@click.option("--frame", type=click.Choice(PLY_FRAMES), default="opencv", show_default=True,
              help="world frame of the file: opencv (y down; what gen_videos exports) or eg3d (y up)")
@click.option("--browser/--no-browser", default=True, show_default=True, help="open the page in the default browser")
def view(ply, port, frame, browser):
    """Serve an interactive WebGL view of a splat .ply on 127.0.0.1 (nothing is loaded from the internet)."""
    from viewer.server import ViewerError, serve  # lazy: keeps --help fast

    try:
        code = serve(ply, port=port, frame=frame, open_browser=browser)
    except ViewerError as error:
        raise click.ClickException(str(error)) from None
    raise SystemExit(code)
