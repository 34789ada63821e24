"""Data: parametric parts, technical-drawing renders, datasets on disk and their loaders."""
