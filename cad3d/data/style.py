"""Drawings as people draw them: the ``varied`` style of synthetic sheets.

A varied sheet is the clean drawing of a part placed at a random scale and place on a sheet
with a border, a title block with text, centre lines on round features, dimension lines with
arrowheads and numbers, a random line weight, hidden lines dashed or omitted, then scanned: a
small skew, paper tone and shading, blur, noise, specks and JPEG-like block artefacts.

Invariants: every choice comes from the sample's generator (same seed => same bytes, whatever
the worker count; text uses PIL's bundled default font, no system font); the returned cameras
map 3D points of the normalized part to the pixels of the final image (placement, scale and
skew are in them); everything drawn is recorded, annotation geometry in sheet pixels before the
skew, which ``sheet_to_image`` (a 2x3 affine of (u, v, 1)) maps into the image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation

from cad3d.geometry.camera import OrthoCamera, iso_camera, rotate_in_plane, sheet_cameras

_TITLES = ("BRACKET", "HOUSING", "FLANGE", "SPACER", "MOUNT", "COVER", "BASE PLATE", "ADAPTER", "SUPPORT")
_MATERIALS = ("AL 6061-T6", "S235JR", "AISI 304", "C45", "POM-C", "CuZn39Pb3", "GJL-250")
_NAMES = ("J.SMITH", "A.MUELLER", "K.TANAKA", "M.ROSSI", "L.DUBOIS", "P.NOVAK")
_SCALES = ("1:1", "1:2", "2:1", "1:5", "1:2.5")
ORTHO_VIEWS = ("front", "top", "side")


@dataclass
class StyledDrawing:
    """image (H, W) uint8, depth (H, W) float32 (0 = background), the exact cameras, the record."""

    image: np.ndarray
    depth: np.ndarray
    cameras: list
    record: dict


@functools.lru_cache(maxsize=32)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=max(int(size), 6))


# -- round features ---------------------------------------------------------------------------
def cylinder_axes(mesh, max_axes: int = 16) -> list[dict]:
    """Axis-aligned round features (holes, bosses, shafts) of a faceted mesh: per axis line,
    {"axis": 0|1|2, "center": [2] (the other two coordinates), "radius", "range": [lo, hi]}.

    Neighbouring facets of one cylinder have normals perpendicular to its axis, a few degrees
    apart; the lines through their centroids along their normals meet on the axis. Coaxial
    features (a counterbore and its hole) merge into one line, with the largest radius.
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    tri = v[np.asarray(mesh.faces)]  # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    adj = np.asarray(mesh.face_adjacency)  # (E, 2)
    if len(adj) == 0:
        return []
    found: dict[tuple, dict] = {}
    for a in range(3):
        o = [k for k in range(3) if k != a]
        i, j = adj[:, 0], adj[:, 1]
        perp = (np.abs(normals[i, a]) < 1e-6) & (np.abs(normals[j, a]) < 1e-6)
        cos = np.einsum("ij,ij->i", normals[i], normals[j])
        keep = perp & (cos < np.cos(np.deg2rad(1.0))) & (cos > np.cos(np.deg2rad(30.0)))
        i, j = i[keep], j[keep]
        if len(i) == 0:
            continue
        ni, nj = normals[i][:, o], normals[j][:, o]  # (P, 2)
        ci, cj = _chord_middle(tri[i][:, :, o], ni), _chord_middle(tri[j][:, :, o], nj)
        det = ni[:, 0] * nj[:, 1] - ni[:, 1] * nj[:, 0]
        ok = np.abs(det) > 1e-6  # degenerate (zero-area) facets have no normal
        i, j, ni, nj, ci, cj, det = i[ok], j[ok], ni[ok], nj[ok], ci[ok], cj[ok], det[ok]
        if len(i) == 0:
            continue
        d = cj - ci
        t = (d[:, 0] * nj[:, 1] - d[:, 1] * nj[:, 0]) / det
        center = ci + t[:, None] * ni  # (P, 2) where the two normal lines meet
        radius = np.linalg.norm(tri[i][:, :, o] - center[:, None, :], axis=2).mean(axis=1)  # (P,)
        key = np.round(center / 0.02).astype(np.int64)
        groups, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        for g in np.flatnonzero(counts >= 6):
            sel = inverse.reshape(-1) == g
            span = np.concatenate([tri[i[sel]][:, :, a].ravel(), tri[j[sel]][:, :, a].ravel()])
            c = center[sel].mean(axis=0)
            r = float(np.median(radius[sel]))
            if r < 0.015 or r > 1.2:
                continue
            found[(a, *groups[g])] = {"axis": a, "center": [round(float(x), 5) for x in c], "radius": round(r, 5),
                                      "range": [round(float(span.min()), 5), round(float(span.max()), 5)]}
    axes = sorted(found.values(), key=lambda f: -f["radius"])
    return axes[:max_axes]


def _chord_middle(tri2: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """A facet parallel to the axis seen end-on is a chord: (P, 3, 2) corners, (P, 2) normals ->
    (P, 2) the chord's middle, where the normal line passes through the axis."""
    t = np.stack([-n2[:, 1], n2[:, 0]], axis=1)  # (P, 2) along the chord
    s = np.einsum("pkd,pd->pk", tri2, t)  # (P, 3)
    base = tri2[:, 0] - s[:, :1] * t  # a point on the chord's line at s = 0
    return base + ((s.min(axis=1) + s.max(axis=1)) / 2)[:, None] * t


# -- drawing primitives -----------------------------------------------------------------------
class _Sheet:
    """Annotation layer (PIL "L", 255 paper). Dimensions stay inside the free area of the sheet
    and never touch the part's lines (``blocked``, the dilated part ink) nor each other."""

    def __init__(self, size: int, free: tuple, unit: float, blocked: np.ndarray):
        from PIL import Image, ImageDraw

        self.size = size
        self.image = Image.new("L", (size, size), 255)
        self.draw = ImageDraw.Draw(self.image)
        self.free = free  # (u0, v0, u1, v1) where annotations may go
        self.unit = unit  # pixels per "point" of annotation geometry (size / 256)
        self.blocked = blocked  # (H, W) bool

    def fits(self, box) -> bool:
        u0, v0, u1, v1 = box
        f = self.free
        return u0 >= f[0] and v0 >= f[1] and u1 <= f[2] and v1 <= f[3]

    def chain(self, p0, p1, width: int = 1) -> None:
        """Long-dash, dot centre line from p0 to p1."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        length = float(np.linalg.norm(p1 - p0))
        if length < 1:
            return
        d = (p1 - p0) / length
        dash, gap, dot = 9 * self.unit, 2 * self.unit, max(1.0, self.unit)
        s = 0.0
        while s < length:
            e = min(s + dash, length)
            self.draw.line([tuple(p0 + s * d), tuple(p0 + e * d)], fill=0, width=width)
            m = e + gap
            if m < length:
                self.draw.line([tuple(p0 + m * d), tuple(p0 + min(m + dot, length) * d)], fill=0, width=width)
            s = m + dot + gap

    def text_box(self, center, text: str, font) -> tuple:
        u0, v0, u1, v1 = self.draw.textbbox((0, 0), text, font=font)
        w, h = u1 - u0, v1 - v0
        return (center[0] - w / 2, center[1] - h / 2, center[0] + w / 2, center[1] + h / 2), (u0, v0)

    def dimension(self, p0, p1, normal, offset: float, text: str, font, gap: float) -> dict | None:
        """Aligned dimension of p0-p1 drawn ``offset`` px along ``normal`` (unit, outward): extension
        lines, a dimension line with two arrowheads and the number beyond it. None if it won't fit."""
        p0, p1, n = np.asarray(p0, float), np.asarray(p1, float), np.asarray(normal, float)
        q0, q1 = p0 + offset * n, p1 + offset * n
        length = float(np.linalg.norm(q1 - q0))
        arrow = 5.0 * self.unit
        if length < 3 * arrow:
            return None
        tw = self.draw.textbbox((0, 0), text, font=font)
        half = 0.5 * max(tw[2] - tw[0], tw[3] - tw[1])
        tc = (q0 + q1) / 2 + n * (half + 2 * self.unit)
        tbox, (ou, ov) = self.text_box(tc, text, font)
        e0, e1 = p0 + gap * n, q0 + 3 * self.unit * n  # a gap between the part and the extension line
        f0, f1 = p1 + gap * n, q1 + 3 * self.unit * n
        pts = np.array([e0, e1, f0, f1, q0, q1])
        box = (min(pts[:, 0].min(), tbox[0]), min(pts[:, 1].min(), tbox[1]),
               max(pts[:, 0].max(), tbox[2]), max(pts[:, 1].max(), tbox[3]))
        if not self.fits(box):
            return None
        from PIL import Image, ImageDraw

        scratch = Image.new("L", (self.size, self.size), 255)
        draw = ImageDraw.Draw(scratch)
        draw.line([tuple(q0), tuple(q1)], fill=0)
        d = (q1 - q0) / length
        side = np.array([-d[1], d[0]]) * arrow * 0.3
        for tip, back in ((q0, q0 + arrow * d), (q1, q1 - arrow * d)):
            draw.polygon([tuple(tip), tuple(back + side), tuple(back - side)], fill=0)
        draw.text((tbox[0] - ou, tbox[1] - ov), text, fill=0, font=font)
        layer = np.asarray(scratch)
        ink = layer < 255
        r0, c0 = max(int(tbox[1]) - 1, 0), max(int(tbox[0]) - 1, 0)
        ink[r0 : int(np.ceil(tbox[3])) + 1, c0 : int(np.ceil(tbox[2])) + 1] = True  # the text's whole box
        if (ink & self.blocked).any():
            return None
        # Extension lines run up to the part by design, so they are added after the test.
        draw.line([tuple(e0), tuple(e1)], fill=0)
        draw.line([tuple(f0), tuple(f1)], fill=0)
        layer = np.asarray(scratch)
        self.image = Image.fromarray(np.minimum(np.asarray(self.image), layer))
        self.draw = ImageDraw.Draw(self.image)
        rows, cols = np.nonzero(ink)
        win = (slice(max(rows.min() - 3, 0), rows.max() + 4), slice(max(cols.min() - 3, 0), cols.max() + 4))
        self.blocked[win] |= binary_dilation(ink[win], iterations=2)
        return {"from": [round(float(x), 2) for x in p0], "to": [round(float(x), 2) for x in p1],
                "offset_px": round(float(offset), 2), "text": text}


def _fmt(mm: float) -> str:
    return f"{mm:.0f}" if mm >= 10 else f"{mm:.1f}"


# -- the sheet --------------------------------------------------------------------------------
def _layout(rng: np.random.Generator, size: int, unit: float, font) -> dict:
    """Border and title block: their geometry and text (sheet pixels), and the free drawing area."""
    rec: dict = {"border": None, "title_block": None}
    free = [2.0, 2.0, size - 2.0, size - 2.0]
    if rng.random() < 0.85:
        inset = round(float(rng.uniform(0.015, 0.045)) * size, 1)
        width = int(rng.integers(1, 3))
        rec["border"] = {"box": [inset, inset, size - inset, size - inset], "width": width}
        free = [inset + 3 * unit, inset + 3 * unit, size - inset - 3 * unit, size - inset - 3 * unit]
        if rng.random() < 0.8:
            tw = round(float(rng.uniform(0.4, 0.55)) * size, 1)
            rows = int(rng.integers(2, 4))
            row_h = round(float(font.size) * 1.5, 1)
            box = [size - inset - tw, size - inset - rows * row_h, size - inset, size - inset]
            texts = [str(rng.choice(_TITLES)), f"No. {int(rng.integers(1000, 99999))}-{int(rng.integers(1, 99)):02d}",
                     f"SCALE {rng.choice(_SCALES)}", str(rng.choice(_MATERIALS)), f"DRN {rng.choice(_NAMES)}",
                     f"SHEET 1/{int(rng.integers(1, 4))}"]
            rec["title_block"] = {"box": box, "rows": rows, "texts": texts[: 2 * rows]}
            free[3] = box[1] - 3 * unit
    rec["free"] = [round(float(x), 2) for x in free]
    return rec


def _draw_layout(sheet: _Sheet, rec: dict, font) -> None:
    if rec["border"]:
        sheet.draw.rectangle(rec["border"]["box"], outline=0, width=rec["border"]["width"])
    tb = rec["title_block"]
    if tb:
        u0, v0, u1, v1 = tb["box"]
        rows = tb["rows"]
        row_h = (v1 - v0) / rows
        mid = u0 + 0.5 * (u1 - u0)
        sheet.draw.rectangle(tb["box"], outline=0, width=1)
        for k in range(1, rows):
            sheet.draw.line([(u0, v0 + k * row_h), (u1, v0 + k * row_h)], fill=0)
        sheet.draw.line([(mid, v0), (mid, v1)], fill=0)
        for k, text in enumerate(tb["texts"]):
            r, c = divmod(k, 2)
            room = (mid - u0) - 4 * sheet.unit
            wide = sheet.draw.textlength(text, font=font)
            f = font if wide <= room else _font(int(font.size * room / wide))
            while len(text) > 3 and sheet.draw.textlength(text, font=f) > room:  # the smallest font still overflows
                text = text[:-1]
            tb["texts"][k] = text  # recorded as drawn
            sheet.draw.text((u0 + c * (mid - u0) + 2 * sheet.unit, v0 + r * row_h + 0.2 * row_h), text, fill=0,
                            font=f)


def _cameras(view: str, rng: np.random.Generator, size: int, area, projection: str, margin: float) -> list:
    if view == "three_view":
        return sheet_cameras(projection, (size, size), area=area, margin=margin)
    if view == "random":
        from cad3d.geometry.camera import random_camera

        base = random_camera(rng, (size, size))
        return [OrthoCamera.looking(base.forward, image_size=(size, size), viewport=area, margin=margin, name="random")]
    return [OrthoCamera.looking(iso_camera().forward, image_size=(size, size), viewport=area, margin=margin, name="iso")]


def _centre_lines(sheet: _Sheet, cams: list, axes: list[dict]) -> list[dict]:
    out = []
    for cam in cams:
        for f in axes:
            a, r = f["axis"], f["radius"]
            o = [k for k in range(3) if k != a]
            ext = 0.06 + 0.15 * r  # world units past the feature, as drawn by hand
            p0, p1 = np.zeros(3), np.zeros(3)
            p0[o], p1[o] = f["center"], f["center"]
            p0[a], p1[a] = f["range"][0] - ext, f["range"][1] + ext
            uv, _ = cam.project(np.stack([p0, p1]))
            if np.linalg.norm(uv[1] - uv[0]) > 3:
                sheet.chain(uv[0], uv[1])
                out.append({"camera": cam.name, "axis": "xyz"[a], "kind": "axis", "radius": r,
                            "from": [round(float(x), 2) for x in uv[0]], "to": [round(float(x), 2) for x in uv[1]]})
            else:  # seen end-on: a cross on the circle's centre
                c = uv[0]
                half = (r + ext) * cam.scale
                sheet.chain(c - (half, 0), c + (half, 0))
                sheet.chain(c - (0, half), c + (0, half))
                out.append({"camera": cam.name, "axis": "xyz"[a], "kind": "cross", "radius": r,
                            "center": [round(float(x), 2) for x in c]})
    return out


def _dimensions(sheet: _Sheet, rng, cams: list, lo, hi, mm_per_unit: float, font, gap: float) -> list[dict]:
    out = []
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    for cam in cams:
        uv, _ = cam.project(corners)  # (8, 2)
        u0, v0 = uv.min(axis=0)
        u1, v1 = uv.max(axis=0)
        offset = float(rng.uniform(8, 13)) * sheet.unit + gap
        if cam.name in ORTHO_VIEWS:
            below = rng.random() < 0.6
            right = rng.random() < 0.6
            cands = [((u0, v1 if below else v0), (u1, v1 if below else v0), (0, 1 if below else -1), (u1 - u0)),
                     ((u1 if right else u0, v0), (u1 if right else u0, v1), (1 if right else -1, 0), (v1 - v0))]
            cands = [(p, q, n, px / cam.scale * mm_per_unit) for p, q, n, px in cands]
        else:  # pictorial: the two bottom edges of the box at its lowest corner, true lengths
            bottom = [k for k in range(8) if corners[k, 2] == lo[2]]
            k0 = max(bottom, key=lambda k: uv[k, 1])
            cands = []
            for axis in (0, 1):
                k1 = next(k for k in bottom if k != k0 and np.sum(corners[k] != corners[k0]) == 1
                          and corners[k, axis] != corners[k0, axis])
                d = uv[k1] - uv[k0]
                n = np.array([-d[1], d[0]]) / max(np.linalg.norm(d), 1e-9)
                if np.dot(n, uv[k0] - uv.mean(axis=0)) < 0:
                    n = -n
                cands.append((uv[k0], uv[k1], n, abs(hi[axis] - lo[axis]) * mm_per_unit))
        for p, q, n, mm in cands:
            if rng.random() < 0.8:
                d = sheet.dimension(p, q, n, offset, _fmt(mm), font, gap)
                if d is not None:
                    out.append({"camera": cam.name, "value_mm": round(float(mm), 2), **d})
    return out


# -- scanning ---------------------------------------------------------------------------------
_JPEG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64).reshape(8, 8)


def jpeg_like(image: np.ndarray, quality: int) -> np.ndarray:
    """(H, W) float in [0, 255] -> the same after 8x8 DCT quantization with the JPEG luminance
    table at ``quality`` (1..100): block edges and ringing like a JPEG, in plain numpy/scipy."""
    from scipy.fft import dctn, idctn

    q = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = np.clip(np.floor((_JPEG_LUMA * q + 50) / 100), 1, 255)
    h, w = image.shape
    ph, pw = -h % 8, -w % 8
    x = np.pad(image, ((0, ph), (0, pw)), mode="edge") - 128.0
    blocks = x.reshape((h + ph) // 8, 8, (w + pw) // 8, 8).transpose(0, 2, 1, 3)  # (BH, BW, 8, 8)
    coef = np.round(dctn(blocks, axes=(2, 3), norm="ortho") / table) * table
    out = idctn(coef, axes=(2, 3), norm="ortho").transpose(0, 2, 1, 3).reshape(h + ph, w + pw) + 128.0
    return out[:h, :w]


def _turn_sources(shape, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """For each output pixel of an image turned ``degrees`` counter-clockwise about its centre,
    the (row, col) array coordinates it comes from (pixel centres at +0.5)."""
    h, w = shape
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    du, dv = cols + 0.5 - w / 2, rows + 0.5 - h / 2
    return h / 2 + s * du + c * dv - 0.5, w / 2 + c * du - s * dv - 0.5  # the inverse turn


def _turn(array: np.ndarray, src, linear: bool) -> np.ndarray:
    """``array`` resampled at ``src`` (from `_turn_sources`): bilinear or nearest, 0 outside."""
    if linear:
        from scipy.ndimage import map_coordinates

        return map_coordinates(array, list(src), order=1, mode="constant", cval=0.0)
    r, c = np.floor(src[0] + 0.5).astype(np.int64), np.floor(src[1] + 0.5).astype(np.int64)
    inside = (r >= 0) & (r < array.shape[0]) & (c >= 0) & (c < array.shape[1])
    return np.where(inside, array[np.clip(r, 0, array.shape[0] - 1), np.clip(c, 0, array.shape[1] - 1)], 0)


def _scan(ink: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Ink coverage (H, W) in [0, 1] -> scanned uint8 paper."""
    h, w = ink.shape
    paper = float(rng.uniform(215, 252))
    shade = float(rng.uniform(0, 14))
    angle = float(rng.uniform(0, 2 * np.pi))
    ink_level = float(rng.uniform(0, 70))
    rows, cols = np.mgrid[0:h, 0:w] / max(h, w)
    field = paper - shade * (np.cos(angle) * cols + np.sin(angle) * rows)  # (H, W) uneven lighting
    img = field * (1 - ink) + ink_level * ink
    blur = round(float(rng.uniform(0.3, 0.9)), 2) if rng.random() < 0.6 else 0.0
    if blur > 0:
        from scipy.ndimage import gaussian_filter

        img = gaussian_filter(img, blur)
    noise = round(float(rng.uniform(0.5, 6.0)), 2)
    img = img + rng.normal(0.0, noise, size=img.shape)
    n_specks = int(rng.poisson(h * w * 2e-4))
    sr, sc = rng.integers(0, h, n_specks), rng.integers(0, w, n_specks)
    img[sr, sc] = rng.uniform(40, 170, n_specks)
    quality = int(rng.integers(25, 90)) if rng.random() < 0.6 else None
    if quality is not None:
        img = jpeg_like(np.clip(img, 0, 255), quality)
    rec = {"paper": round(paper, 2), "shading": round(shade, 2), "ink_level": round(ink_level, 2),
           "blur_sigma": blur, "noise_std": noise, "specks": n_specks, "jpeg_quality": quality}
    return np.clip(np.round(img), 0, 255).astype(np.uint8), rec


# -- public -----------------------------------------------------------------------------------
def draw_varied(mesh, view: str, rng: np.random.Generator, image_size: int, *, projection: str,
                mm_per_unit: float = 1.0) -> StyledDrawing:
    """A varied-style sheet of the normalized ``mesh`` (see the module docstring).

    view: iso | three_view | random; projection: the three-view standard; mm_per_unit: the
    part's millimetres per normalized unit (dimension numbers are in mm).
    """
    from cad3d.data.render import render_drawing

    size = int(image_size)
    unit = size / 256.0
    font = _font(round(float(rng.uniform(7.5, 10.5)) * unit))
    layout = _layout(rng, size, unit, font)
    fu0, fv0, fu1, fv1 = layout["free"]
    skew = round(float(rng.uniform(-3.0, 3.0)), 2) if rng.random() < 0.5 else 0.0
    # The part's square, somewhere in the free area, 45-95% of its shorter side.
    room = min(fu1 - fu0, fv1 - fv0)
    side = int(round(float(rng.uniform(0.45, 0.95)) * room))
    r0 = int(round(fv0 + float(rng.uniform(0, 1)) * (fv1 - fv0 - side)))
    c0 = int(round(fu0 + float(rng.uniform(0, 1)) * (fu1 - fu0 - side)))
    area = (r0, c0, side, side)
    margin = round(float(rng.uniform(0.06, 0.2)), 3)
    cams = _cameras(view, rng, size, area, projection, margin)
    line_width = round(float(rng.uniform(1.0, 2.5)), 2)
    hidden = "dashed" if rng.random() < 0.4 else "none"
    drawing = render_drawing(mesh, cams, hidden=hidden, line_width=line_width)
    part_ink = drawing.image < 128

    sheet = _Sheet(size, tuple(layout["free"]), unit, binary_dilation(part_ink, iterations=3))
    _draw_layout(sheet, layout, font)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre = _centre_lines(sheet, cams, cylinder_axes(mesh)) if rng.random() < 0.8 else []
    gap = 5 * unit + line_width / 2
    dims = _dimensions(sheet, rng, cams, lo, hi, mm_per_unit, font, gap) if rng.random() < 0.85 else []

    ink = np.maximum(part_ink.astype(np.float64), (255.0 - np.asarray(sheet.image, dtype=np.float64)) / 255.0)
    depth = drawing.depth
    if skew:
        src = _turn_sources(ink.shape, skew)
        ink = _turn(ink, src, linear=True)
        depth = _turn(depth, src, linear=False).astype(np.float32)
        part_ink = _turn(part_ink, src, linear=False)
        cams = [rotate_in_plane(c, skew, (size / 2, size / 2)) for c in cams]
    image, scan = _scan(ink, rng)
    rows, cols = np.nonzero(part_ink)
    bbox = [int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1] if len(rows) else None
    t = np.deg2rad(skew)
    pivot = size / 2
    sheet_to_image = [[np.cos(t), np.sin(t), pivot - np.cos(t) * pivot - np.sin(t) * pivot],
                      [-np.sin(t), np.cos(t), pivot + np.sin(t) * pivot - np.cos(t) * pivot]]
    clean = [] if view == "random" else _cameras(view, rng, size, None, projection, 0.06)  # draws nothing
    record = {
        "name": "varied", "line_width": line_width, "hidden": hidden, "font_size": int(font.size),
        "part_area": list(area), "camera_margin": margin, "skew_deg": skew,
        "sheet_to_image": [[round(float(x), 6) for x in row] for row in sheet_to_image],
        "clean_to_image": {c.name: _similarity(k, c) for k, c in zip(clean, cams)},
        "part_bbox": bbox, **{k: layout[k] for k in ("border", "title_block", "free")},
        "centre_lines": centre, "dimensions": dims, "scan": scan,
    }
    return StyledDrawing(image=image, depth=depth.astype(np.float32), cameras=cams, record=record)


def _similarity(a: OrthoCamera, b: OrthoCamera) -> list:
    """2x3 affine taking camera ``a``'s pixels to camera ``b``'s (same view direction)."""
    pts = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]])
    ua, _ = a.project(pts)
    ub, _ = b.project(pts)
    src = np.hstack([ua, np.ones((4, 1))])  # (4, 3)
    m, *_ = np.linalg.lstsq(src, ub, rcond=None)  # (3, 2)
    return [[round(float(x), 6) for x in row] for row in m.T]

