"""cad3d: turn 2D CAD drawings into 3D point clouds, and train the models that do it.

Stages, in the order modules may import each other:
geometry -> data -> models -> training -> conversion -> evaluation; `cad3d.cli` sits on top.
"""

__version__ = "0.1.0"
