"""The names of the synthetic part families, in the order that family indices follow.

Kept apart from the mesh builders (`cad3d.data.parts`) so models can size their family head
without importing them."""

FAMILIES: tuple[str, ...] = (
    "block_with_holes",
    "plate_hole_pattern",
    "l_bracket",
    "u_channel",
    "t_beam",
    "i_beam",
    "stepped_shaft",
    "tube",
    "flange_bolt_circle",
    "gear",
    "wedge",
    "hex_nut",
    "boolean_combo",
)
# Random CAD programs (cad3d.data.procedural): selectable by name, not part of the default mix.
PROCEDURAL = "procedural"
ALL_FAMILIES: tuple[str, ...] = FAMILIES + (PROCEDURAL,)
