"""The attention explorer: a local web page (``attnkit serve``) to look at attention interactively.

A Starlette app (:func:`create_app`) serves a JSON API and a static page shipped in
``explorer/static`` (plain HTML, CSS and JavaScript: no network at view time). Modes
(:mod:`attnkit.explorer.modes`, one module each) turn inputs into views of attention matrices:
text on all-MiniLM-L6-v2, approximate against exact attention, a trained translation run, a
ViT or captioner over an image, and Whisper tiny.en over a real clip.
"""

from .api import Analysis, ResultStore, View, pool_blocks
from .app import Explorer, create_app

__all__ = ["Analysis", "ResultStore", "View", "pool_blocks", "Explorer", "create_app"]
