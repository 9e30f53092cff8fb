"""Local web viewer for 3DGS .ply files (`python -m viewer FILE.ply` or `python gen_videos.py view FILE.ply`).

`viewer.server` validates and packs the file and serves the page in `viewer/static/`; `viewer.cli` is the command.
"""
