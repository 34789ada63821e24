"""Procedural parts: random CAD programs instead of parametric families.

A program is a base solid (a 2D sketch of lines, arcs and circles, combined by 2D booleans and
filleted, then extruded; or a stepped profile revolved about z) followed by 2-7 features: holes
(blind, through, counterbored, countersunk), pockets, slots, bosses, side holes, linear and
circular patterns, walls joined by a boolean union, and a top chamfer. Every step and every
drawn number is recorded in order in ``params["program"]`` (numbers rounded before the solid is
built, so the record describes the mesh exactly).

Invariants: deterministic per generator state; solids come from manifold3d booleans, so meshes
are closed and consistently wound; features are placed from the sketch's geometry (shapely), so
cutters fit inside the part; a program that would leave nothing is rebuilt without that step.
"""

from __future__ import annotations

import math

import numpy as np
from manifold3d import CrossSection, FillRule, JoinType, Manifold, OpType
from shapely.geometry import Point, Polygon
from shapely.ops import unary_union

from cad3d.data.parts import CIRCLE_SEGMENTS, HOLE_SEGMENTS, _cylinder, _mm, _polygon, _revolve

FAMILY = "procedural"


def _r(x: float, nd: int = 1) -> float:
    return round(float(x), nd)


# -- sketches ---------------------------------------------------------------------------------
def _primitive(rng: np.random.Generator, size: float) -> tuple[CrossSection, dict]:
    kind = str(rng.choice(["rect", "polygon", "stadium", "circle", "ell", "tee"]))
    a, b = _mm(rng, 0.5 * size, size), _mm(rng, 0.3 * size, size)
    if kind == "rect":
        cs, p = CrossSection.square((a, b), True), {"length": a, "width": b}
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if rng.random() < 0.5 else np.arange(n) * 2 * np.pi / n
        radii = [_r(a / 2 * rng.uniform(0.6, 1.0)) for _ in range(n)]
        pts = [(_r(r * math.cos(t)), _r(r * math.sin(t))) for r, t in zip(radii, angles)]
        cs, p = _polygon(pts), {"points": [list(q) for q in pts]}
    elif kind == "stadium":
        w = min(a, b) / 2
        cs = CrossSection.square((a, w), True) + CrossSection.circle(w / 2, HOLE_SEGMENTS).translate((a / 2, 0))
        cs = cs + CrossSection.circle(w / 2, HOLE_SEGMENTS).translate((-a / 2, 0))
        p = {"length": a, "width": _r(w)}
    elif kind == "circle":
        cs, p = CrossSection.circle(a / 2, CIRCLE_SEGMENTS), {"diameter": a}
    else:  # two bars: an L or a T
        t = _mm(rng, 0.2 * b, 0.5 * b)
        bar = CrossSection.square((a, t), True).translate((0, (b - t) / 2))
        leg_x = -(a - t) / 2 if kind == "ell" else 0.0
        cs = bar + CrossSection.square((t, b), True).translate((leg_x, 0))
        p = {"length": a, "height": b, "thickness": t}
    return cs, {"shape": kind, **p}


def _sketch(rng: np.random.Generator, size: float) -> tuple[CrossSection, list[dict]]:
    """A closed 2D profile: a primitive, maybe combined with others (union/difference), with
    convex corners filleted or chamfered; the largest piece if a difference splits it."""
    cs, rec = _primitive(rng, size)
    steps = [{"op": "sketch", **rec}]
    for _ in range(int(rng.integers(0, 3))):
        other, orec = _primitive(rng, 0.6 * size)
        angle = _r(rng.choice([0.0, 45.0, 90.0, float(rng.uniform(0, 180))]), 0)
        off = [_mm(rng, -0.4 * size, 0.4 * size), _mm(rng, -0.4 * size, 0.4 * size)]
        op = str(rng.choice(["union", "difference"]))
        other = other.rotate(angle).translate(tuple(off))
        new = cs + other if op == "union" else cs - other
        pieces = sorted(new.decompose(), key=lambda c: -c.area())
        if not pieces or pieces[0].area() < 0.25 * cs.area():
            continue
        cs = pieces[0]
        steps.append({"op": f"sketch_{op}", "angle": angle, "offset": off, **orec})
    corner = str(rng.choice(["sharp", "fillet", "chamfer"]))
    if corner != "sharp":
        r = _mm(rng, 0.02 * size, 0.1 * size)
        join = JoinType.Round if corner == "fillet" else JoinType.Bevel
        rounded = cs.offset(-r, JoinType.Miter).offset(r, join, 2.0, 8)
        if not rounded.is_empty() and rounded.area() > 0.5 * cs.area() and len(rounded.decompose()) == 1:
            cs = rounded
            steps.append({"op": f"sketch_{corner}_corners", "radius": r})
    return cs, steps


def _shapely(cs: CrossSection) -> Polygon:
    polys = [Polygon(np.asarray(p)) for p in cs.to_polygons()]
    outer = max(polys, key=lambda p: p.area)
    return unary_union([outer.buffer(0)]).difference(unary_union([p for p in polys if p is not outer]))


# -- placing features -------------------------------------------------------------------------
def _spot(rng: np.random.Generator, region, clearance: float, tries: int = 30):
    """A point of ``region`` (shapely) at least ``clearance`` mm inside it, or None."""
    inner = region.buffer(-clearance)
    if inner.is_empty:
        return None
    x0, y0, x1, y1 = inner.bounds
    for _ in range(tries):
        x, y = _r(rng.uniform(x0, x1)), _r(rng.uniform(y0, y1))
        if inner.contains(Point(x, y)):
            return x, y
    return None


def _hole_cutters(x, y, d, top, depth, style, extra) -> list[Manifold]:
    cut = [_cylinder(d / 2, depth + 1.0, (x, y, top - depth / 2 + 0.5))]
    if style == "counterbore":
        cut.append(_cylinder(extra["cb_diameter"] / 2, 2 * extra["cb_depth"], (x, y, top)))
    elif style == "countersink":
        r1, h = extra["cs_diameter"] / 2, extra["cs_diameter"] / 2 - d / 2
        cut.append(Manifold.cylinder(h + 0.5, d / 2 - 0.01, r1 + 0.5, HOLE_SEGMENTS).translate((x, y, top - h)))
    return cut


def _hole(rng, region, top: float, height: float, d_max: float):
    d = _mm(rng, 0.1 * d_max, 0.45 * d_max)
    style = str(rng.choice(["plain", "counterbore", "countersink"], p=[0.5, 0.3, 0.2]))
    outer = {"plain": d, "counterbore": _r(1.7 * d), "countersink": _r(1.9 * d)}[style]
    spot = _spot(rng, region, outer / 2 + 1.0)
    if spot is None:
        return None
    through = bool(rng.random() < 0.6)
    depth = height + 2.0 if through else _mm(rng, 0.3 * height, 0.8 * height)
    extra = {"cb_diameter": outer, "cb_depth": _mm(rng, 0.1 * height, 0.3 * height)} if style == "counterbore" else (
        {"cs_diameter": outer} if style == "countersink" else {})
    rec = {"op": "hole", "at": list(spot), "diameter": d, "through": through, "depth": _r(depth), "style": style,
           **extra}
    return _hole_cutters(*spot, d, top, depth, style, extra), rec, spot, outer


def _features(rng, solid: Manifold, region, height: float, size: float, steps: list) -> Manifold:
    cutters, adds = [], []
    taken = region
    for _ in range(int(rng.integers(2, 8))):
        kind = str(rng.choice(["hole", "pocket", "slot", "boss", "side_hole", "pattern", "wall"],
                              p=[0.24, 0.14, 0.12, 0.12, 0.12, 0.18, 0.08]))
        if kind == "hole":
            got = _hole(rng, taken, height, height, size)
            if got:
                cut, rec, spot, outer = got
                cutters += cut
                taken = taken.difference(Point(spot).buffer(outer / 2 + 1.0))
                steps.append(rec)
        elif kind in ("pocket", "slot"):
            length, width = _mm(rng, 0.15 * size, 0.45 * size), _mm(rng, 0.08 * size, 0.25 * size)
            angle = _r(rng.choice([0.0, 90.0, float(rng.uniform(0, 180))]), 0)
            spot = _spot(rng, taken, 0.5 * math.hypot(length, width) + 1.0)
            if spot is None:
                continue
            depth = _mm(rng, 0.2 * height, 0.7 * height) if kind == "pocket" or rng.random() < 0.5 else height + 2
            if kind == "pocket":
                prof = CrossSection.square((length, width), True)
                rad = _r(min(rng.uniform(0, 0.5), 0.45) * width)
                if rad > 0.2:
                    prof = prof.offset(-rad, JoinType.Miter).offset(rad, JoinType.Round, 2.0, 8)
            else:
                prof = CrossSection.square((length, width), True) + CrossSection.circle(width / 2, HOLE_SEGMENTS).translate(
                    (length / 2, 0)) + CrossSection.circle(width / 2, HOLE_SEGMENTS).translate((-length / 2, 0))
                rad = _r(width / 2)
            body = Manifold.extrude(prof.rotate(angle), depth + 1.0).translate((*spot, height - depth))
            cutters.append(body)
            taken = taken.difference(Point(spot).buffer(0.5 * math.hypot(length, width) + width))
            steps.append({"op": kind, "at": list(spot), "length": length, "width": width, "angle": angle,
                          "depth": _r(depth), "corner_radius": rad})
        elif kind == "boss":
            d = _mm(rng, 0.1 * size, 0.35 * size)
            spot = _spot(rng, taken, d / 2 + 1.0)
            if spot is None:
                continue
            h = _mm(rng, 0.1 * height + 1, 0.8 * height + 2)
            bore = _r(rng.uniform(0.3, 0.6) * d) if rng.random() < 0.5 else 0.0
            adds.append(_cylinder(d / 2, h + 0.5, (*spot, height + h / 2 - 0.25), segments=CIRCLE_SEGMENTS))
            if bore:
                cutters.append(_cylinder(bore / 2, 2 * (h + height), (*spot, height)))
            taken = taken.difference(Point(spot).buffer(d / 2 + 1.0))
            steps.append({"op": "boss", "at": list(spot), "diameter": d, "height": h, "bore": bore})
        elif kind == "side_hole":
            axis = str(rng.choice(["x", "y"]))
            x0, y0, x1, y1 = region.bounds
            lo, hi = (y0, y1) if axis == "x" else (x0, x1)
            d = _mm(rng, 0.1 * height, 0.5 * height)
            if d < 1.0:
                continue
            z = _mm(rng, d / 2 + 0.5, max(height - d / 2 - 0.5, d / 2 + 0.6))
            c = _mm(rng, lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo))
            center = (0.0, c, z) if axis == "x" else (c, 0.0, z)
            cutters.append(_cylinder(d / 2, 4 * size, center, axis=axis))
            steps.append({"op": "side_hole", "axis": axis, "offset": c, "z": z, "diameter": d})
        elif kind == "pattern":
            d = _mm(rng, 0.05 * size, 0.15 * size)
            n = int(rng.integers(3, 9))
            circular = bool(rng.random() < 0.5)
            cx, cy = region.centroid.x, region.centroid.y
            if circular:
                radius, start = _mm(rng, 0.15 * size, 0.45 * size), _r(rng.uniform(0, 360), 0)
                pts = [(cx + radius * math.cos(math.radians(start + 360 * k / n)),
                        cy + radius * math.sin(math.radians(start + 360 * k / n))) for k in range(n)]
                rec = {"kind": "circular", "radius": radius, "start_angle": start}
            else:
                pitch, angle = _mm(rng, 1.5 * d, 3 * d), _r(rng.choice([0.0, 90.0, float(rng.uniform(0, 180))]), 0)
                ux, uy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
                pts = [(cx + (k - (n - 1) / 2) * pitch * ux, cy + (k - (n - 1) / 2) * pitch * uy) for k in range(n)]
                rec = {"kind": "linear", "pitch": pitch, "angle": angle}
            inner = taken.buffer(-(d / 2 + 0.8))
            pts = [(_r(x), _r(y)) for x, y in pts if inner.contains(Point(x, y))]
            if len(pts) < 2:
                continue
            through = bool(rng.random() < 0.7)
            depth = height + 2.0 if through else _mm(rng, 0.3 * height, 0.8 * height)
            for x, y in pts:
                cutters += _hole_cutters(x, y, d, height, depth, "plain", {})
                taken = taken.difference(Point(x, y).buffer(d / 2 + 0.8))
            steps.append({"op": "pattern", "feature": "hole", "diameter": d, "count": n, "depth": _r(depth),
                          "centers": [list(p) for p in pts], **rec})
        else:  # a wall standing on one edge of the footprint, joined by a boolean union
            x0, y0, x1, y1 = region.bounds
            side = str(rng.choice(["-x", "+x", "-y", "+y"]))
            t = _mm(rng, 0.06 * size, 0.15 * size)
            h = _mm(rng, 0.4 * height + 2, 1.5 * height + 5)
            along_x = side in ("-y", "+y")
            length = (x1 - x0) if along_x else (y1 - y0)
            pos = {"-x": x0 + t / 2, "+x": x1 - t / 2, "-y": y0 + t / 2, "+y": y1 - t / 2}[side]
            size3 = (length, t, height + h) if along_x else (t, length, height + h)
            center = ((x0 + x1) / 2, pos, (height + h) / 2) if along_x else (pos, (y0 + y1) / 2, (height + h) / 2)
            wall = Manifold.cube(size3, True).translate(center) ^ Manifold.extrude(
                _footprint_cs(region), height + h + 1).translate((0, 0, -0.5))
            adds.append(wall)
            steps.append({"op": "wall_union", "side": side, "thickness": t, "height": h})
    if adds:
        solid = Manifold.batch_boolean([solid] + adds, OpType.Add)
    if cutters:
        cut = Manifold.batch_boolean([solid] + cutters, OpType.Subtract)
        if not cut.is_empty() and cut.volume() > 0.2 * solid.volume():
            solid = cut
        else:
            steps.append({"op": "undo_cuts", "reason": "nothing would be left"})
    return solid


def _footprint_cs(region) -> CrossSection:
    geom = region if region.geom_type == "Polygon" else max(region.geoms, key=lambda g: g.area)
    loops = [np.asarray(geom.exterior.coords)[:-1]] + [np.asarray(i.coords)[:-1] for i in geom.interiors]
    return CrossSection(loops, FillRule.EvenOdd)  # shapely's loops may run either way


# -- bases ------------------------------------------------------------------------------------
def _revolved(rng: np.random.Generator, size: float, steps: list) -> tuple[Manifold, Polygon, float]:
    n = int(rng.integers(1, 5))
    bore = _mm(rng, 0.05 * size, 0.2 * size) if rng.random() < 0.5 else 0.0
    radii = [_mm(rng, max(bore + 2.0, 0.15 * size), 0.5 * size) for _ in range(n)]
    lengths = [_mm(rng, 0.08 * size, 0.4 * size) for _ in range(n)]
    chamfer = _r(min(rng.uniform(0, 0.15) * min(radii), 0.3 * min(lengths))) if rng.random() < 0.5 else 0.0
    profile, z = [(bore, 0.0)], 0.0
    for k, (r, l) in enumerate(zip(radii, lengths)):
        c = chamfer if chamfer > 0.2 and r - chamfer > bore + 0.5 else 0.0
        profile += [(r - c, z), (r, z + c), (r, z + l - c), (r - c, z + l)] if c else [(r, z), (r, z + l)]
        z += l
    profile.append((bore, z))
    profile = [p for k, p in enumerate(profile) if k == 0 or p != profile[k - 1]]
    solid = _revolve(profile, CIRCLE_SEGMENTS)
    steps.append({"op": "revolve", "steps": n, "radii": radii, "lengths": lengths, "bore_diameter": _r(2 * bore),
                  "edge_chamfer": chamfer, "profile": [[_r(a, 2), _r(b, 2)] for a, b in profile]})
    top_r = radii[-1]
    region = Point(0, 0).buffer(top_r, 32)
    if bore:
        region = region.difference(Point(0, 0).buffer(bore + 1.0, 32))
    return solid, region, z


def _extruded(rng: np.random.Generator, size: float, steps: list) -> tuple[Manifold, Polygon, float]:
    cs, sketch_steps = _sketch(rng, size)
    steps += sketch_steps
    height = _mm(rng, 0.08 * size, 0.6 * size)
    steps.append({"op": "extrude", "height": height})
    return Manifold.extrude(cs, height), _shapely(cs), height


def make_procedural(rng: np.random.Generator) -> tuple[Manifold, dict]:
    """One random CAD program: (solid, {"program": [step, ...], ...})."""
    size = _mm(rng, 30, 150)
    steps: list[dict] = []
    base = str(rng.choice(["extrude", "revolve"], p=[0.7, 0.3]))
    solid, region, height = (_extruded if base == "extrude" else _revolved)(rng, size, steps)
    solid = _features(rng, solid, region, height, size, steps)
    if base == "extrude" and rng.random() < 0.3:
        c = _mm(rng, 0.05 * height, 0.25 * height)
        k = _r(rng.uniform(0.85, 0.97), 3)
        band = Manifold.extrude(_footprint_cs(region), c, 0, 0.0, (k, k)).translate((0, 0, height - c))
        body = Manifold.extrude(_footprint_cs(region), height - c + 0.01)
        keep = (body + band) ^ solid
        upper = solid.trim_by_plane((0, 0, 1), height + 1e-3)  # bosses and walls above the top stay
        chamfered = keep + upper
        if not chamfered.is_empty() and chamfered.volume() > 0.5 * solid.volume():
            solid = chamfered
            steps.append({"op": "chamfer_top", "height": c, "scale_top": k})
    bx = solid.bounding_box()
    solid = solid.translate((-(bx[0] + bx[3]) / 2, -(bx[1] + bx[4]) / 2, -bx[2]))
    return solid, {"size": size, "base": base, "program": steps}
