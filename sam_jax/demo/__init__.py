"""The interactive web demo: `server.py` (standard-library HTTP) and the page in `web/`."""

from .server import DemoApp, DemoServer, check_web_assets, make_server

__all__ = ["DemoApp", "DemoServer", "check_web_assets", "make_server"]
