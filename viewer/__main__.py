"""python -m viewer FILE.ply [--port 8000] [--frame opencv|eg3d] [--no-browser]"""
from viewer.cli import view

if __name__ == "__main__":
    view()
