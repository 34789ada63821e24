"""The local web app of `cad3d serve`: `ConversionService` (the converter and what the pages ask
of it, no web code) and `server.build_app` / `server.launch` (the Gradio page)."""

from cad3d.app.service import AppConfig, ConversionService, DrawingResult

__all__ = ["AppConfig", "ConversionService", "DrawingResult"]
