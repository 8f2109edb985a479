"""The demo site's project package: settings, URLs and the ASGI application."""
