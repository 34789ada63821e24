"""Parametric mechanical parts: the shapes the synthetic drawings are made of.

Every family is a function ``rng -> (manifold, params)``. Parameters are drawn from the
generator, rounded (0.1 mm for lengths, 1 degree for angles) *before* the solid is built, so
the recorded ``params`` describe the mesh exactly. Solids are built with manifold3d (extrude,
revolve, booleans), which always returns closed, consistently wound meshes.

Conventions: millimetre units, z is up, the part's footprint is roughly centred on the z axis
and it stands on (or around) the xy plane. Circles use ``CIRCLE_SEGMENTS`` segments, holes
``HOLE_SEGMENTS``, so meshes stay small (hundreds to a few thousand triangles).
"""

from __future__ import annotations

import math
from typing import Callable

import manifold3d
import numpy as np
import trimesh
from manifold3d import CrossSection, Manifold, OpType

from cad3d.data.families import ALL_FAMILIES, FAMILIES, PROCEDURAL  # noqa: F401 - re-exported

CIRCLE_SEGMENTS = 48
HOLE_SEGMENTS = 32


# -- small helpers ----------------------------------------------------------------------------
def _mm(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A length drawn uniformly in [lo, hi] mm, rounded to 0.1 mm."""
    return round(float(rng.uniform(lo, hi)), 1)


def _box(size, center=(0.0, 0.0, 0.0)) -> Manifold:
    """Axis-aligned box of ``size`` (sx, sy, sz) mm centred at ``center``."""
    return Manifold.cube(tuple(float(s) for s in size), True).translate(tuple(float(c) for c in center))


def _cylinder(radius: float, length: float, center=(0.0, 0.0, 0.0), axis: str = "z", segments: int = HOLE_SEGMENTS) -> Manifold:
    """Cylinder of ``radius`` and ``length`` mm along ``axis``, centred at ``center``."""
    cyl = Manifold.cylinder(float(length), float(radius), float(radius), segments, True)
    if axis == "x":
        cyl = cyl.rotate((0.0, 90.0, 0.0))
    elif axis == "y":
        cyl = cyl.rotate((90.0, 0.0, 0.0))
    return cyl.translate(tuple(float(c) for c in center))


# Proper rotations (det +1) taking an extrusion (profile X, Y; extrusion Z in [0, L]) to world axes.
def _prism(section: CrossSection, length: float, axis: str) -> Manifold:
    """Extrude a 2D ``section`` by ``length`` mm, centred on the origin along ``axis``.

    axis "z": profile (X, Y) -> world (x, y); "y": profile (X, Y) -> world (x, z);
    "x": profile (X, Y) -> world (y, z).
    """
    solid = Manifold.extrude(section, float(length))
    h = float(length) / 2.0
    if axis == "z":
        mat = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -h]]
    elif axis == "y":
        mat = [[1, 0, 0, 0], [0, 0, -1, h], [0, 1, 0, 0]]
    else:
        mat = [[0, 0, 1, -h], [1, 0, 0, 0], [0, 1, 0, 0]]
    return solid.transform(np.asarray(mat, dtype=np.float64))


def _polygon(points) -> CrossSection:
    """CrossSection of one closed contour (any orientation)."""
    pts = np.asarray(points, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    if 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:
        pts = pts[::-1]
    return CrossSection([pts])


def _rounded_rect(length: float, width: float, radius: float, corner_segments: int = 6) -> CrossSection:
    """Rectangle ``length`` x ``width`` mm centred at the origin with corner radius ``radius``."""
    if radius <= 0:
        return CrossSection.square((length, width), True)
    pts = []
    hx, hy = length / 2 - radius, width / 2 - radius
    for k, (cx, cy) in enumerate([(hx, hy), (-hx, hy), (-hx, -hy), (hx, -hy)]):
        for a in np.linspace(0.0, np.pi / 2, corner_segments + 1):
            ang = a + k * np.pi / 2
            pts.append((cx + radius * np.cos(ang), cy + radius * np.sin(ang)))
    return _polygon(pts)


def _revolve(profile, segments: int = CIRCLE_SEGMENTS) -> Manifold:
    """Solid of revolution about the z axis of a closed (r, z) profile (r >= 0), in mm."""
    return Manifold.revolve(_polygon(profile), segments)


def _subtract(base: Manifold, cutters: list[Manifold]) -> Manifold:
    return Manifold.batch_boolean([base] + cutters, OpType.Subtract) if cutters else base


def _to_trimesh(solid: Manifold) -> trimesh.Trimesh:
    mesh = solid.to_mesh64()
    vertices = np.ascontiguousarray(np.asarray(mesh.vert_properties, dtype=np.float64)[:, :3])
    faces = np.ascontiguousarray(np.asarray(mesh.tri_verts, dtype=np.int64))
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


# -- families ---------------------------------------------------------------------------------
def _block_with_holes(rng: np.random.Generator) -> tuple[Manifold, dict]:
    length = _mm(rng, 40, 120)
    width = _mm(rng, 30, length)
    height = _mm(rng, 10, 60)
    pattern = str(rng.choice(["single", "pair", "quad"]))
    ox = round(float(rng.uniform(0.2, 0.3)) * length, 1) if pattern != "single" else 0.0
    oy = round(float(rng.uniform(0.2, 0.3)) * width, 1) if pattern == "quad" else 0.0
    if pattern == "single":
        centers = [(0.0, 0.0)]
        room = min(length, width) / 2  # largest hole radius that would touch an edge
    elif pattern == "pair":
        centers = [(-ox, 0.0), (ox, 0.0)]
        room = min(length / 2 - ox, ox, width / 2)
    else:
        centers = [(-ox, -oy), (ox, -oy), (-ox, oy), (ox, oy)]
        room = min(length / 2 - ox, ox, width / 2 - oy, oy)
    diameter = round(float(rng.uniform(0.5, 1.1)) * room, 1)
    counterbore = bool(rng.random() < 0.4)
    cb_diameter = round(min(1.6 * diameter, 1.7 * room), 1) if counterbore else 0.0
    cb_depth = round(float(rng.uniform(0.2, 0.45)) * height, 1) if counterbore else 0.0
    cross_hole = bool(rng.random() < 0.35 and height >= 20)
    cross_diameter = round(float(rng.uniform(0.25, 0.5)) * height, 1) if cross_hole else 0.0

    block = _box((length, width, height), (0, 0, height / 2))
    cutters = [_cylinder(diameter / 2, height + 2, (x, y, height / 2)) for x, y in centers]
    if counterbore:
        cutters += [_cylinder(cb_diameter / 2, 2 * cb_depth, (x, y, height)) for x, y in centers]
    if cross_hole:
        cutters.append(_cylinder(cross_diameter / 2, width + 2, (0, 0, height / 2), axis="y"))
    params = dict(length=length, width=width, height=height, hole_pattern=pattern, hole_diameter=diameter,
                  hole_centers=[[x, y] for x, y in centers], counterbore=counterbore,
                  counterbore_diameter=cb_diameter, counterbore_depth=cb_depth,
                  cross_hole=cross_hole, cross_hole_diameter=cross_diameter)
    return _subtract(block, cutters), params


def _plate_hole_pattern(rng: np.random.Generator) -> tuple[Manifold, dict]:
    length = _mm(rng, 60, 160)
    width = _mm(rng, 40, length)
    thickness = _mm(rng, 3, 12)
    rows = int(rng.integers(1, 4))
    cols = int(rng.integers(2, 6))
    corner_radius = round(float(rng.uniform(0.0, 0.15)) * width, 1) if rng.random() < 0.6 else 0.0
    margin = round(max(corner_radius, 0.12 * width), 1)
    pitch_x = round((length - 2 * margin) / max(cols - 1, 1), 1)
    pitch_y = round((width - 2 * margin) / max(rows - 1, 1), 1) if rows > 1 else 0.0
    free = min(pitch_x, pitch_y if rows > 1 else 2 * margin, 2 * margin)
    diameter = _mm(rng, 0.2 * free, 0.6 * free)
    plate = _prism(_rounded_rect(length, width, corner_radius), thickness, "z").translate((0, 0, thickness / 2))
    centers = [((c - (cols - 1) / 2) * pitch_x, (r - (rows - 1) / 2) * pitch_y) for r in range(rows) for c in range(cols)]
    cutters = [_cylinder(diameter / 2, thickness + 2, (x, y, thickness / 2)) for x, y in centers]
    params = dict(length=length, width=width, thickness=thickness, rows=rows, cols=cols, pitch_x=pitch_x,
                  pitch_y=pitch_y, hole_diameter=diameter, corner_radius=corner_radius)
    return _subtract(plate, cutters), params


def _l_bracket(rng: np.random.Generator) -> tuple[Manifold, dict]:
    base = _mm(rng, 30, 100)  # along x
    height = _mm(rng, 30, 100)  # along z
    width = _mm(rng, 20, 80)  # along y
    thickness = _mm(rng, 3, 0.25 * min(base, height))
    t = thickness
    profile = [(0, 0), (base, 0), (base, t), (t, t), (t, height), (0, height)]
    solid = _prism(_polygon(profile), width, "y")
    gusset = bool(rng.random() < 0.4)
    gusset_size = round(float(rng.uniform(0.3, 0.6)) * min(base - t, height - t), 1) if gusset else 0.0
    gusset_thickness = round(min(t, 0.3 * width), 1) if gusset else 0.0
    if gusset:
        # The rib overlaps the legs by t/2 so the union is one solid.
        tri = [(t / 2, t / 2), (t + gusset_size, t / 2), (t / 2, t + gusset_size)]
        solid = solid + _prism(_polygon(tri), gusset_thickness, "y")
    holes_per_leg = int(rng.integers(0, 3))
    if gusset and holes_per_leg:
        holes_per_leg = 2  # one on each side of the rib
    lanes = width / holes_per_leg if holes_per_leg else 0.0
    if gusset:
        lanes = width / 2 - gusset_thickness / 2
    hole_d = round(float(rng.uniform(0.3, 0.6)) * min(lanes, base - t, height - t), 1) if holes_per_leg else 0.0
    if gusset and holes_per_leg:
        ys = [-(width / 2 + gusset_thickness / 2) / 2, (width / 2 + gusset_thickness / 2) / 2]
    else:
        ys = [(k - (holes_per_leg - 1) / 2) * lanes for k in range(holes_per_leg)]
    xb = t + 0.6 * (base - t)
    zv = t + 0.6 * (height - t)
    cutters = []
    for y in ys:
        cutters.append(_cylinder(hole_d / 2, 3 * t, (xb, y, t / 2)))
        cutters.append(_cylinder(hole_d / 2, 3 * t, (t / 2, y, zv), axis="x"))
    solid = _subtract(solid, cutters).translate((-base / 2, 0, 0))
    params = dict(base_length=base, height=height, width=width, thickness=thickness, gusset=gusset,
                  gusset_size=gusset_size, gusset_thickness=gusset_thickness, holes_per_leg=holes_per_leg,
                  hole_diameter=hole_d)
    return solid, params


def _u_channel(rng: np.random.Generator) -> tuple[Manifold, dict]:
    width = _mm(rng, 30, 90)  # along x
    height = _mm(rng, 20, 80)  # along z
    length = _mm(rng, 60, 180)  # along y
    wall = _mm(rng, 2.5, 0.2 * width)
    base_t = _mm(rng, 2.5, 0.3 * height)
    hx = width / 2
    profile = [(-hx, 0), (hx, 0), (hx, height), (hx - wall, height), (hx - wall, base_t), (-hx + wall, base_t),
               (-hx + wall, height), (-hx, height)]
    solid = _prism(_polygon(profile), length, "y")
    n_slots = int(rng.integers(0, 4))
    hole_d = round(float(rng.uniform(0.2, 0.5)) * (width - 2 * wall), 1) if n_slots else 0.0
    cutters = [_cylinder(hole_d / 2, 3 * base_t, (0, (k - (n_slots - 1) / 2) * length / (n_slots + 0.5), base_t / 2))
               for k in range(n_slots)]
    params = dict(width=width, height=height, length=length, wall_thickness=wall, base_thickness=base_t,
                  base_holes=n_slots, hole_diameter=hole_d)
    return _subtract(solid, cutters), params


def _t_beam(rng: np.random.Generator) -> tuple[Manifold, dict]:
    flange_w = _mm(rng, 30, 90)
    height = _mm(rng, 30, 90)
    flange_t = _mm(rng, 3, 0.25 * height)
    web_t = _mm(rng, 3, 0.4 * flange_w)
    length = _mm(rng, 80, 200)
    fw, wt = flange_w / 2, web_t / 2
    profile = [(-wt, 0), (wt, 0), (wt, height - flange_t), (fw, height - flange_t), (fw, height), (-fw, height),
               (-fw, height - flange_t), (-wt, height - flange_t)]
    params = dict(flange_width=flange_w, height=height, flange_thickness=flange_t, web_thickness=web_t, length=length)
    return _prism(_polygon(profile), length, "x"), params


def _i_beam(rng: np.random.Generator) -> tuple[Manifold, dict]:
    height = _mm(rng, 40, 120)
    flange_w = _mm(rng, 0.4 * height, 1.0 * height)
    flange_t = _mm(rng, 3, 0.18 * height)
    web_t = _mm(rng, 2.5, 0.3 * flange_w)
    length = _mm(rng, 80, 220)
    fw, wt, ft = flange_w / 2, web_t / 2, flange_t
    profile = [(-fw, 0), (fw, 0), (fw, ft), (wt, ft), (wt, height - ft), (fw, height - ft), (fw, height),
               (-fw, height), (-fw, height - ft), (-wt, height - ft), (-wt, ft), (-fw, ft)]
    params = dict(height=height, flange_width=flange_w, flange_thickness=flange_t, web_thickness=web_t, length=length)
    return _prism(_polygon(profile), length, "x"), params


def _stepped_shaft(rng: np.random.Generator) -> tuple[Manifold, dict]:
    n_steps = int(rng.integers(2, 5))
    radii = sorted((_mm(rng, 5, 30) for _ in range(n_steps)), reverse=True)
    # Make consecutive steps visibly different.
    for k in range(1, n_steps):
        radii[k] = round(min(radii[k], radii[k - 1] - 2.0), 1)
        radii[k] = max(radii[k], 2.0)
    order = str(rng.choice(["descending", "centre_large"]))
    if n_steps < 3:
        order = "descending"
    if order == "centre_large":
        radii = radii[1::2][::-1] + radii[0::2]
    lengths = [_mm(rng, 10, 50) for _ in range(n_steps)]
    chamfer = round(float(rng.uniform(0.0, 0.3)) * min(radii[0], radii[-1]), 1) if rng.random() < 0.6 else 0.0
    chamfer = min(chamfer, 0.4 * lengths[0], 0.4 * lengths[-1])
    chamfer = round(chamfer, 1)
    profile = [(0.0, 0.0)]
    z = 0.0
    for k, (r, l) in enumerate(zip(radii, lengths)):
        if k == 0 and chamfer > 0:
            profile += [(r - chamfer, 0.0), (r, chamfer)]
        else:
            profile.append((r, z))
        z += l
        if k == n_steps - 1 and chamfer > 0:
            profile += [(r, z - chamfer), (r - chamfer, z)]
        else:
            profile.append((r, z))
    profile.append((0.0, z))
    solid = _revolve(profile).translate((0, 0, -z / 2)).rotate((0.0, 90.0, 0.0))
    params = dict(steps=n_steps, order=order, radii=radii, lengths=lengths, end_chamfer=chamfer, total_length=round(z, 1))
    return solid, params


def _tube(rng: np.random.Generator) -> tuple[Manifold, dict]:
    outer = _mm(rng, 10, 50)
    inner = _mm(rng, 0.4 * outer, outer - 2.0)
    length = _mm(rng, 20, 150)
    axis = str(rng.choice(["z", "x"]))
    solid = _revolve([(inner, 0), (outer, 0), (outer, length), (inner, length)]).translate((0, 0, -length / 2))
    if axis == "x":
        solid = solid.rotate((0.0, 90.0, 0.0))
    params = dict(outer_radius=outer, inner_radius=inner, length=length, axis=axis)
    return solid, params


def _flange_bolt_circle(rng: np.random.Generator) -> tuple[Manifold, dict]:
    outer = _mm(rng, 30, 80)
    thickness = _mm(rng, 5, 0.35 * outer)
    hub_r = _mm(rng, 0.3 * outer, 0.55 * outer)
    hub_h = _mm(rng, 0.3 * thickness, 1.5 * thickness) if rng.random() < 0.7 else 0.0
    bore_r = _mm(rng, 0.3 * hub_r, 0.8 * hub_r)
    bolt_count = int(rng.integers(3, 9))
    bolt_circle = round(0.5 * (hub_r + outer), 1)
    max_bolt_r = min(0.35 * (outer - hub_r), bolt_circle * math.sin(math.pi / bolt_count) * 0.7)
    bolt_r = _mm(rng, 0.4 * max_bolt_r, max_bolt_r)
    top = thickness + hub_h
    profile = [(bore_r, 0), (outer, 0), (outer, thickness), (hub_r, thickness), (hub_r, top), (bore_r, top)]
    if hub_h == 0:
        profile = [(bore_r, 0), (outer, 0), (outer, thickness), (bore_r, thickness)]
    solid = _revolve(profile)
    angles = [2 * math.pi * k / bolt_count for k in range(bolt_count)]
    cutters = [_cylinder(bolt_r, 3 * thickness, (bolt_circle * math.cos(a), bolt_circle * math.sin(a), thickness / 2))
               for a in angles]
    params = dict(outer_radius=outer, thickness=thickness, hub_radius=hub_r, hub_height=hub_h, bore_radius=bore_r,
                  bolt_count=bolt_count, bolt_circle_radius=bolt_circle, bolt_hole_radius=bolt_r)
    return _subtract(solid, cutters), params


def _gear(rng: np.random.Generator) -> tuple[Manifold, dict]:
    teeth = int(rng.integers(8, 25))
    module = round(float(rng.uniform(2.0, 5.0)), 2)
    pitch_r = module * teeth / 2
    tip_r, root_r = pitch_r + module, pitch_r - 1.25 * module
    thickness = _mm(rng, 0.1 * pitch_r, 0.5 * pitch_r)
    bore_r = _mm(rng, 0.15 * root_r, 0.45 * root_r)
    keyway = bool(rng.random() < 0.5)
    # Trapezoidal teeth: tooth thickness at the tip/root as a fraction of the angular pitch.
    tip_frac, root_frac = 0.22, 0.32
    step = 2 * math.pi / teeth
    pts = []
    for k in range(teeth):
        a = k * step
        pts += [
            (root_r * math.cos(a - root_frac * step), root_r * math.sin(a - root_frac * step)),
            (tip_r * math.cos(a - tip_frac * step), tip_r * math.sin(a - tip_frac * step)),
            (tip_r * math.cos(a + tip_frac * step), tip_r * math.sin(a + tip_frac * step)),
            (root_r * math.cos(a + root_frac * step), root_r * math.sin(a + root_frac * step)),
        ]
    section = _polygon(pts) - CrossSection.circle(bore_r, HOLE_SEGMENTS)
    key_w = round(0.5 * bore_r, 1) if keyway else 0.0
    if keyway:
        section = section - CrossSection.square((key_w, 0.6 * bore_r), True).translate((0.0, bore_r))
    solid = _prism(section, thickness, "z").translate((0, 0, thickness / 2))
    params = dict(teeth=teeth, module=module, pitch_radius=round(pitch_r, 2), thickness=thickness, bore_radius=bore_r,
                  keyway=keyway, keyway_width=key_w)
    return solid, params


def _wedge(rng: np.random.Generator) -> tuple[Manifold, dict]:
    length = _mm(rng, 40, 120)  # along x
    height = _mm(rng, 20, 80)  # along z
    width = _mm(rng, 20, 90)  # along y
    low = round(float(rng.uniform(0.0, 0.5)) * height, 1) if rng.random() < 0.6 else 0.0
    flat = round(float(rng.uniform(0.1, 0.4)) * length, 1) if rng.random() < 0.6 else 0.0
    profile = [(0.0, 0.0), (length, 0.0), (length, height)]
    if flat > 0:
        profile.append((length - flat, height))
    if low > 0:
        profile.append((0.0, low))
    solid = _prism(_polygon(profile), width, "y").translate((-length / 2, 0, 0))
    hole = bool(rng.random() < 0.4)
    hole_d = round(float(rng.uniform(0.2, 0.4)) * min(width, length), 1) if hole else 0.0
    if hole:
        solid = solid - _cylinder(hole_d / 2, 3 * height, (0.25 * length, 0, height / 2))
    params = dict(length=length, height=height, width=width, low_height=low, top_flat=flat, hole=hole,
                  hole_diameter=hole_d)
    return solid, params


def _hex_nut(rng: np.random.Generator) -> tuple[Manifold, dict]:
    across_flats = _mm(rng, 15, 70)
    thickness = _mm(rng, 0.4 * across_flats, 0.9 * across_flats)
    bore_r = _mm(rng, 0.22 * across_flats, 0.35 * across_flats)
    chamfer = bool(rng.random() < 0.7)
    corner_r = across_flats / math.sqrt(3.0)
    hexagon = [(corner_r * math.cos(math.pi / 3 * k), corner_r * math.sin(math.pi / 3 * k)) for k in range(6)]
    solid = _prism(_polygon(hexagon), thickness, "z").translate((0, 0, thickness / 2))
    if chamfer:
        # 30 degree chamfer starting at 0.95 x across-flats on both faces.
        r0 = 0.475 * across_flats
        rise = (corner_r + 1.0 - r0) * math.tan(math.radians(30))
        rise = min(rise, 0.45 * thickness)
        cone = _revolve([(0, 0), (r0, 0), (corner_r + 1.0, rise), (corner_r + 1.0, thickness - rise), (r0, thickness),
                         (0, thickness)], CIRCLE_SEGMENTS)
        solid = solid ^ cone
    solid = solid - _cylinder(bore_r, thickness + 2, (0, 0, thickness / 2), segments=CIRCLE_SEGMENTS)
    params = dict(across_flats=across_flats, thickness=thickness, bore_radius=bore_r, chamfer=chamfer)
    return solid, params


def _boolean_combo(rng: np.random.Generator) -> tuple[Manifold, dict]:
    simple = [f for f in FAMILIES if f != "boolean_combo"]
    fam_a = str(rng.choice(simple))
    fam_b = str(rng.choice(simple))
    a, params_a = _BUILDERS[fam_a](rng)
    b, params_b = _BUILDERS[fam_b](rng)
    op = str(rng.choice(["union", "difference"]))
    (ax0, ay0, az0), (ax1, ay1, az1) = _bounds(a)
    (bx0, by0, bz0), (bx1, by1, bz1) = _bounds(b)
    size_a = np.array([ax1 - ax0, ay1 - ay0, az1 - az0])
    size_b = np.array([bx1 - bx0, by1 - by0, bz1 - bz0])
    scale = round(float(rng.uniform(0.35, 0.7)) * float(np.min(size_a[:2] / size_b[:2])), 3)
    scale = round(min(scale, 2.0 * float(size_a[2] / size_b[2]) if op == "difference" else scale), 3)
    offset_frac = [round(float(v), 2) for v in rng.uniform(-0.3, 0.3, size=2)]
    b = b.translate((-(bx0 + bx1) / 2, -(by0 + by1) / 2, -bz0)).scale((scale, scale, scale))
    cx = (ax0 + ax1) / 2 + offset_frac[0] * size_a[0]
    cy = (ay0 + ay1) / 2 + offset_frac[1] * size_a[1]
    # Union: the second part sits on the top face sinking in a little; difference: it cuts in from the top.
    sink = round(float(rng.uniform(0.1, 0.4)), 2)
    b = b.translate((float(cx), float(cy), float(az1 - sink * scale * size_b[2])))
    result = a + b if op == "union" else a - b
    if op == "difference" and result.volume() < 0.3 * a.volume():
        op, result = "union", a + b
    params = dict(operation=op, scale=scale, offset_fraction=offset_frac, sink_fraction=sink,
                  first={"family": fam_a, "params": params_a}, second={"family": fam_b, "params": params_b})
    return result, params


def _bounds(solid: Manifold) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    b = solid.bounding_box()
    return (b[0], b[1], b[2]), (b[3], b[4], b[5])


_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[Manifold, dict]]] = {
    "block_with_holes": _block_with_holes,
    "plate_hole_pattern": _plate_hole_pattern,
    "l_bracket": _l_bracket,
    "u_channel": _u_channel,
    "t_beam": _t_beam,
    "i_beam": _i_beam,
    "stepped_shaft": _stepped_shaft,
    "tube": _tube,
    "flange_bolt_circle": _flange_bolt_circle,
    "gear": _gear,
    "wedge": _wedge,
    "hex_nut": _hex_nut,
    "boolean_combo": _boolean_combo,
}


# -- public API -------------------------------------------------------------------------------
def make_part(family: str, rng: np.random.Generator) -> tuple[trimesh.Trimesh, dict]:
    """Build one part of ``family`` with parameters drawn from ``rng``.

    Returns a closed, consistently wound, z-up ``trimesh.Trimesh`` (vertices (V, 3) float64 in
    mm, faces (F, 3) int64) and a JSON-serializable dict of every drawn parameter (lengths in mm).
    The same generator state gives bit-identical vertices, faces and params.
    """
    if family == PROCEDURAL:
        from cad3d.data.procedural import make_procedural

        builder = make_procedural
    elif family in _BUILDERS:
        builder = _BUILDERS[family]
    else:
        raise ValueError(f"unknown part family {family!r}; choose one of {', '.join(ALL_FAMILIES)}")
    solid, params = builder(rng)
    if solid.is_empty() or solid.status() != manifold3d.Error.NoError:
        raise RuntimeError(f"part family {family!r} produced an invalid solid ({solid.status()}) for params {params}")
    params = dict(params, circle_segments=CIRCLE_SEGMENTS, hole_segments=HOLE_SEGMENTS)
    return _to_trimesh(solid), params


def random_part(rng: np.random.Generator) -> tuple[str, trimesh.Trimesh, dict]:
    """A part of a family drawn uniformly from ``FAMILIES``: (family, mesh, params)."""
    family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    mesh, params = make_part(family, rng)
    return family, mesh, params
