"""MaskGIT studio: generate and edit in the browser (``maskgit-pipeline studio``, docs/STUDIO.md).

A standard-library HTTP server with a JSON API (``api.Studio``) and one static page; every
handler calls the same ``pipeline.generate`` functions as the ``sample`` and ``edit`` commands.
"""
from pipeline.studio.api import RequestError, Studio
from pipeline.studio.models import StudioPaths, resolve_paths
from pipeline.studio.server import make_server, serve_in_thread

__all__ = ["Studio", "StudioPaths", "RequestError", "resolve_paths", "make_server", "serve_in_thread"]
