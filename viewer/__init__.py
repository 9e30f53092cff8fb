"""Local web viewer for 3DGS .ply files (`python -m viewer FILE.ply` or `python gen_videos.py view FILE.ply`)."""
from .server import FRAMES, pack_splats, serve, start_server

__all__ = ["FRAMES", "pack_splats", "serve", "start_server"]
