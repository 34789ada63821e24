"""Reading drawing sheets: where the part is, and which three-view standard lays them out.

``find_part`` crops the part off a sheet (drawn or scanned) ignoring its border, title block,
dimensions and notes, so a converter can hand its models the part framed like a clean drawing
(``crop_to_part``). ``detect_projection`` tells a first-angle from a third-angle three-view
sheet; ``cad3d.geometry.camera.sheet_cameras`` then gives that sheet's cameras.

Invariants: images are (H, W) float in [0, 1] (1 = paper) or uint8 (255 = paper); nothing here
depends on how the sheet was made, only on its ink.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cad3d.geometry.camera import DEFAULT_PROJECTION, PROJECTIONS, OrthoCamera, sheet_cameras


def _paper_level(img: np.ndarray, block: int = 16) -> np.ndarray:
    """(H, W) the paper's brightness around each pixel: the 90th percentile of each block (lines
    are sparse, so most of a block is paper), smoothly interpolated."""
    h, w = img.shape
    ph, pw = -h % block, -w % block
    padded = np.pad(img, ((0, ph), (0, pw)), mode="edge")
    blocks = padded.reshape((h + ph) // block, block, (w + pw) // block, block).transpose(0, 2, 1, 3)
    level = np.percentile(blocks.reshape(*blocks.shape[:2], -1), 90, axis=2)  # (BH, BW)
    level = ndimage.maximum_filter(level, size=3)  # a block full of text or border still sees paper near it
    rows = (np.arange(h) + 0.5) / block - 0.5
    cols = (np.arange(w) + 0.5) / block - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(level, [rr, cc], order=1, mode="nearest")


def ink_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels clearly darker than the paper around them. Scans have grey paper,
    uneven light, blur and noise: the paper level is estimated locally, and faint pixels count
    when they touch clearly dark ones (hysteresis), which keeps blurred thin lines whole."""
    img = np.asarray(image, dtype=np.float64)
    if img.max() > 1.5:
        img = img / 255.0
    paper = _paper_level(img)
    dark = min(float(np.percentile(img, 0.2)), float(paper.min()) - 0.1)
    strong = img < paper - 0.4 * (paper - dark)
    strong &= ndimage.uniform_filter(strong.astype(np.float64), 3) > 1.5 / 9  # lone specks are not ink
    weak, n = ndimage.label(img < paper - 0.25 * (paper - dark), structure=np.ones((3, 3)))
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(weak[strong])] = True
    keep[0] = False
    return keep[weak]


def _enclosed_cells(frame: np.ndarray) -> np.ndarray:
    """(H, W) bool: what the ``frame`` component encloses except its largest room (the drawing
    area): the cells of a title block attached to the border, with everything in them."""
    rooms, n = ndimage.label(~frame)
    if n <= 1:
        return np.zeros_like(frame)
    sizes = ndimage.sum_labels(np.ones_like(frame), rooms, index=np.arange(1, n + 1))
    outside = set(np.unique(np.concatenate([rooms[0], rooms[-1], rooms[:, 0], rooms[:, -1]])).tolist())
    keep = {int(np.argmax(sizes)) + 1} | outside
    return ~np.isin(rooms, list(keep)) & ~frame


def find_views(image: np.ndarray, *, min_fill: float = 1.3) -> list[tuple[int, int, int, int]]:
    """Boxes (row0, col0, row1, col1) (end-exclusive) of the drawn views of the part on a sheet.

    Ink is grouped into components, bridging one-pixel gaps. The border is the component spanning
    most of the sheet; a title block attached to it is what it encloses besides the drawing area.
    Of the rest, views are the components that enclose area (a view's outline is closed: filled,
    it covers ``min_fill`` times its ink) or hold much ink; dimension lines, centre lines and text
    do neither. A view's box is that of its filled outline without one-pixel-thin lines touching
    it (extension and centre lines); boxes inside another one (holes) merge into it.
    """
    ink = ink_mask(image)
    h, w = ink.shape
    bridged = ink
    labels, n = ndimage.label(bridged, structure=np.ones((3, 3)))
    if n == 0:
        return []
    objects = ndimage.find_objects(labels)
    drop = np.zeros(n + 1, dtype=bool)
    drop[0] = True
    for k, sl in enumerate(objects, start=1):
        if (sl[0].stop - sl[0].start) > 0.8 * h and (sl[1].stop - sl[1].start) > 0.8 * w:
            drop[np.unique(labels[_enclosed_cells(labels == k) & bridged])] = True
            drop[k] = True
    seeds = []
    for k, sl in enumerate(objects, start=1):
        if drop[k]:
            continue
        mine = labels[sl] == k
        filled = ndimage.binary_fill_holes(mine)
        core = ndimage.binary_opening(filled, np.ones((3, 3)))
        rows, cols = np.nonzero(core if core.any() else filled)
        box = (sl[0].start + rows.min(), sl[1].start + cols.min(), sl[0].start + rows.max() + 1,
               sl[1].start + cols.max() + 1)
        seeds.append((box, int(filled.sum()), int(mine.sum()), int(core.sum())))
    if not seeds:
        return []
    most_fill = max(s[1] for s in seeds)
    most_ink = max(s[2] for s in seeds)
    # A view encloses area, or is a large drawing with some, or is drawn solid (a thin bar seen
    # end-on); dimension lines enclose none and are one pixel thin.
    views = [b for b, f, c, core in seeds if f >= 0.05 * most_fill
             and (f >= min_fill * c or (c >= 0.25 * most_ink and f >= 1.1 * c) or core >= 0.5 * c)]
    views.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
    merged: list[tuple] = []
    for b in views:
        if not any(m[0] <= b[0] and m[1] <= b[1] and b[2] <= m[2] and b[3] <= m[3] for m in merged):
            merged.append(tuple(int(x) for x in b))
    return merged


def find_part(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (row0, col0, row1, col1) (end-exclusive) of the drawn part on a sheet (all its
    views, see `find_views`), without border, title block, dimensions and notes; None if blank."""
    boxes = np.array(find_views(image))
    if len(boxes) == 0:
        return None
    return int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())


def crop_to_part(image: np.ndarray, size: int, *, fill: float = 0.8) -> tuple[np.ndarray, tuple | None]:
    """The part of a sheet centred on white paper, its longer side ``fill`` of ``size`` pixels:
    ((size, size) float32 in [0, 1], the box from `find_part`). A blank sheet is only resized."""
    from PIL import Image

    img = np.asarray(image, dtype=np.float64)
    if img.max() > 1.5:
        img = img / 255.0
    box = find_part(img)
    if box is None:
        out = Image.fromarray((img * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        return np.asarray(out, dtype=np.float32) / 255.0, None
    r0, c0, r1, c1 = box
    side = max(r1 - r0, c1 - c0) / fill
    part = np.where(ink_mask(img)[r0:r1, c0:c1], img[r0:r1, c0:c1], 1.0)  # paper and notes around go
    canvas = np.ones((int(np.ceil(side)) + 2, int(np.ceil(side)) + 2))
    o_r, o_c = (canvas.shape[0] - (r1 - r0)) // 2, (canvas.shape[1] - (c1 - c0)) // 2
    canvas[o_r : o_r + r1 - r0, o_c : o_c + c1 - c0] = part
    out = Image.fromarray((canvas * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(out, dtype=np.float32) / 255.0, box


# Where each standard puts the views on a 2x2 sheet (see `sheet_cameras`).
_PLACES = {"first-angle": {"front": "tl", "top": "bl", "side": "tr", "iso": "br"},
           "third-angle": {"front": "bl", "top": "tl", "side": "br", "iso": "tr"}}


def sheet_views(image: np.ndarray) -> dict[str, tuple[int, int, int, int]] | None:
    """The panels of a three-view sheet: {"tl", "tr", "bl", "br": view box}, the views found
    (`find_views`) grouped by quadrant around the centre of the part's box; None unless at least
    three quadrants hold a view (a view may be too faint or thin to be found)."""
    boxes = find_views(image)
    if len(boxes) < 3:
        return None
    b = np.array(boxes, dtype=np.float64)
    mid_r, mid_c = (b[:, 0].min() + b[:, 2].max()) / 2, (b[:, 1].min() + b[:, 3].max()) / 2
    quads: dict[str, list] = {}
    for box in boxes:
        cr, cc = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        quads.setdefault(("t" if cr < mid_r else "b") + ("l" if cc < mid_c else "r"), []).append(box)
    if len(quads) < 3:
        return None
    return {q: (min(x[0] for x in v), min(x[1] for x in v), max(x[2] for x in v), max(x[3] for x in v))
            for q, v in quads.items()}


def projection_scores(image: np.ndarray) -> dict[str, float]:
    """Per standard, how badly the views it names front, top and side disagree on the part's
    size (a fraction of the part's box): front and top show the same width (x), front and side
    the same height (z), top's height and side's width are both the depth (y). The standard the
    sheet follows scores near 0; all panels share one scale in either standard."""
    quads = sheet_views(image)
    if quads is None:
        return {p: float("inf") for p in PROJECTIONS}
    size = {q: (b[2] - b[0], b[3] - b[1]) for q, b in quads.items()}  # (height, width) in pixels
    extent = max(max(v) for v in size.values())
    # (view, its height or width) pairs that show the same length of the part
    same = ((("front", 1), ("top", 1)), (("front", 0), ("side", 0)), (("top", 0), ("side", 1)))
    scores = {}
    for projection, place in _PLACES.items():
        errs = [abs(size[place[a]][i] - size[place[b]][j]) for (a, i), (b, j) in same
                if place[a] in size and place[b] in size]
        scores[projection] = float(np.mean(errs)) / max(extent, 1) if errs else float("inf")
    return scores


def detect_projection(image: np.ndarray) -> str:
    """'first-angle' or 'third-angle': the standard of a three-view sheet (`projection_scores`);
    the default one when the sheet shows no clear answer."""
    scores = projection_scores(image)
    best = min(scores, key=scores.get)
    return best if np.isfinite(scores[best]) and scores[best] < scores[DEFAULT_PROJECTION] else DEFAULT_PROJECTION


def fit_sheet_cameras(image: np.ndarray, projection: str | None = None) -> list[OrthoCamera] | None:
    """Cameras of a three-view sheet wherever its views sit (a varied sheet: any scale, place and
    panel spacing), or None if four views are not found: `sheet_cameras`' views and names, each
    centred on its view's box, all with one scale that fits the part's largest extent in the unit
    sphere, each owning its quadrant around the part's centre (None unless all four are found). An orthographic view's box is the
    projection of the part's 3D box, so the cameras agree with the part normalized as datasets
    normalize it (centred on its box), up to the unknown ratio of box to bounding sphere; the
    iso camera only roughly (its view's box is not centred on the part's centre in general).
    ``projection`` defaults to `detect_projection`'s answer."""
    quads = sheet_views(image)
    if quads is None or len(quads) < 4:
        return None
    projection = projection or detect_projection(image)
    h, w = np.asarray(image).shape[:2]
    boxes = np.array(list(quads.values()))
    mid_r, mid_c = (boxes[:, 0].min() + boxes[:, 2].max()) / 2, (boxes[:, 1].min() + boxes[:, 3].max()) / 2
    extent = max(max(b[2] - b[0], b[3] - b[1]) for b in quads.values())
    scale = extent / 2.0 / 0.95  # the largest extent spans 95% of the unit sphere's diameter
    area = {"tl": (0, 0, mid_r, mid_c), "tr": (0, mid_c, mid_r, w), "bl": (mid_r, 0, h, mid_c), "br": (mid_r, mid_c, h, w)}
    cams = []
    for cam in sheet_cameras(projection, (h, w)):
        q = _PLACES[projection][cam.name]
        r0, c0, r1, c1 = quads[q]
        a = area[q]
        viewport = (int(round(a[0])), int(round(a[1])), int(round(a[2] - a[0])), int(round(a[3] - a[1])))
        cams.append(OrthoCamera(rotation=cam.rotation, eye=cam.eye, scale=float(scale),
                                principal=((c0 + c1) / 2.0, (r0 + r1) / 2.0), image_size=(h, w), viewport=viewport,
                                name=cam.name))
    return cams
