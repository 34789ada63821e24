"""Orthographic cameras of technical drawings: the one convention the renderer, the depth
lifting and the converters share.

Conventions (all lengths in the normalized object frame, where a part fits the unit sphere):

* world -> camera: ``c = R @ (p - eye)``; ``c_x`` points right, ``c_y`` up and ``c_z`` along
  the viewing direction, so ``c_z`` is the depth of the point (positive in front of the eye).
* camera -> pixel: ``u = cx + scale * c_x`` (column), ``v = cy - scale * c_y`` (row).
  Pixel (row i, column j) covers ``[j, j+1) x [i, i+1)``; its centre is ``(j + 0.5, i + 0.5)``.
* depth maps store ``c_z`` per pixel and 0 where no surface is seen.
* the frame (right, up, forward) is left-handed (image columns right, rows down, depth in):
  ``rotation`` has determinant -1, so it is not a proper rotation for quaternion tools.

A three-view sheet holds several cameras, each owning a ``viewport`` (row0, col0, height,
width) of the image; a single view's viewport is the whole image. Sheets follow one standard,
first- or third-angle projection (`sheet_cameras`), which places the views differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# The eye sits this far from the object's centre, so a part inside the unit sphere has depth
# in [EYE_DISTANCE - 1, EYE_DISTANCE + 1] and depth 0 is free to mean "background".
EYE_DISTANCE = 3.0


def look_rotation(forward: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Rotation (3, 3) whose rows are the camera's right, up and forward axes in world frame.

    ``forward`` is the viewing direction (from the eye into the scene). When it is parallel to
    ``up``, the world y axis serves as up instead.
    """
    f = np.asarray(forward, dtype=np.float64)
    f = f / np.linalg.norm(f)
    u = np.asarray(up, dtype=np.float64)
    if abs(np.dot(f, u / np.linalg.norm(u))) > 0.999:
        u = np.array([0.0, 1.0, 0.0])
    right = np.cross(f, u)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, f)
    return np.stack([right, true_up, f])  # (3, 3)


@dataclass(frozen=True)
class OrthoCamera:
    """An orthographic view; see the module docstring for the conventions."""

    rotation: tuple  # (3, 3) rows: right, up, forward
    eye: tuple  # (3,) world position of the view plane's centre
    scale: float  # pixels per world unit
    principal: tuple  # (cx, cy) pixel position of the optical axis
    image_size: tuple  # (H, W) of the whole image
    viewport: tuple = field(default=None)  # (row0, col0, h, w); None = whole image
    name: str = "iso"

    def __post_init__(self):
        if self.viewport is None:
            object.__setattr__(self, "viewport", (0, 0, int(self.image_size[0]), int(self.image_size[1])))

    # -- construction -------------------------------------------------------------------
    @classmethod
    def looking(
        cls,
        forward,
        *,
        image_size=(256, 256),
        viewport=None,
        up=(0.0, 0.0, 1.0),
        margin: float = 0.06,
        target=(0.0, 0.0, 0.0),
        name: str = "iso",
    ) -> "OrthoCamera":
        """Camera looking along ``forward`` at ``target`` that fits the unit sphere in its viewport
        with ``margin`` (fraction of the viewport) on each side."""
        rot = look_rotation(forward, up)
        h, w = image_size
        r0, c0, vh, vw = viewport if viewport is not None else (0, 0, h, w)
        scale = (min(vh, vw) * (1.0 - 2.0 * margin)) / 2.0
        eye = np.asarray(target, dtype=np.float64) - EYE_DISTANCE * rot[2]
        principal = (c0 + vw / 2.0, r0 + vh / 2.0)
        return cls(
            rotation=tuple(map(tuple, rot.tolist())),
            eye=tuple(eye.tolist()),
            scale=float(scale),
            principal=tuple(float(p) for p in principal),
            image_size=(int(h), int(w)),
            viewport=(int(r0), int(c0), int(vh), int(vw)),
            name=name,
        )

    # -- arrays -------------------------------------------------------------------------
    @property
    def R(self) -> np.ndarray:
        return np.asarray(self.rotation, dtype=np.float64)

    @property
    def eye_array(self) -> np.ndarray:
        return np.asarray(self.eye, dtype=np.float64)

    @property
    def forward(self) -> np.ndarray:
        return self.R[2]

    # -- projection -----------------------------------------------------------------------
    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world -> (N, 3) camera coordinates."""
        return (np.asarray(points, dtype=np.float64) - self.eye_array) @ self.R.T

    def camera_to_world(self, cam: np.ndarray) -> np.ndarray:
        """(N, 3) camera -> (N, 3) world coordinates."""
        return np.asarray(cam, dtype=np.float64) @ self.R + self.eye_array

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> pixel coordinates (N, 2) as (u=column, v=row) and depth (N,)."""
        c = self.world_to_camera(points)
        cx, cy = self.principal
        uv = np.stack([cx + self.scale * c[:, 0], cy - self.scale * c[:, 1]], axis=1)
        return uv, c[:, 2]

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) (u=column, v=row) and depth (N,) -> world points (N, 3)."""
        uv = np.asarray(uv, dtype=np.float64)
        cx, cy = self.principal
        c = np.stack(
            [(uv[:, 0] - cx) / self.scale, (cy - uv[:, 1]) / self.scale, np.asarray(depth, dtype=np.float64)],
            axis=1,
        )
        return self.camera_to_world(c)

    def grid_projection(self) -> np.ndarray:
        """(2, 4) float32 matrix A with ``A @ [x, y, z, 1] = (gx, gy)``: a world point's image position
        in the [-1, 1] coordinates of ``torch.nn.functional.grid_sample`` (align_corners=False) —
        the same whatever the image's pixel size, so it conditions models at any resolution."""
        h, w = self.image_size
        cx, cy = self.principal
        R, eye = self.R, self.eye_array
        row_x = np.r_[R[0], -R[0] @ eye] * (2.0 * self.scale / w) + np.r_[0.0, 0.0, 0.0, 2.0 * cx / w - 1.0]
        row_y = np.r_[R[1], -R[1] @ eye] * (-2.0 * self.scale / h) + np.r_[0.0, 0.0, 0.0, 2.0 * cy / h - 1.0]
        return np.stack([row_x, row_y]).astype(np.float32)

    def pixel_mask(self) -> np.ndarray:
        """(H, W) bool: the pixels this camera's viewport owns."""
        h, w = self.image_size
        r0, c0, vh, vw = self.viewport
        mask = np.zeros((h, w), dtype=bool)
        mask[r0 : r0 + vh, c0 : c0 + vw] = True
        return mask

    # -- serialization ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "type": "orthographic",
            "name": self.name,
            "rotation": [list(map(float, row)) for row in self.rotation],
            "eye": [float(x) for x in self.eye],
            "scale": float(self.scale),
            "principal": [float(x) for x in self.principal],
            "image_size": [int(x) for x in self.image_size],
            "viewport": [int(x) for x in self.viewport],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "OrthoCamera":
        if d.get("type", "orthographic") != "orthographic":
            raise ValueError(f"unsupported camera type {d.get('type')!r}")
        return cls(
            rotation=tuple(tuple(float(x) for x in row) for row in d["rotation"]),
            eye=tuple(float(x) for x in d["eye"]),
            scale=float(d["scale"]),
            principal=tuple(float(x) for x in d["principal"]),
            image_size=tuple(int(x) for x in d["image_size"]),
            viewport=tuple(int(x) for x in d["viewport"]),
            name=str(d.get("name", "view")),
        )


# Standard views of a z-up part. Forward vectors point from the eye into the scene.
ISO_FORWARD = np.array([-1.0, -1.0, -1.0]) / np.sqrt(3.0)  # eye at (+1, +1, +1)
FRONT_FORWARD = np.array([0.0, 1.0, 0.0])  # eye at -y, looking +y
TOP_FORWARD = np.array([0.0, 0.0, -1.0])  # eye above, looking down
SIDE_FORWARD = np.array([-1.0, 0.0, 0.0])  # eye at +x (right side view)


def iso_camera(image_size=(256, 256)) -> OrthoCamera:
    return OrthoCamera.looking(ISO_FORWARD, image_size=image_size, name="iso")


# Sheet standards (ISO 128 / ISO 5456-2): the views are the same, only their places differ.
PROJECTIONS = ("first-angle", "third-angle")
DEFAULT_PROJECTION = "first-angle"
LEFT_FORWARD = np.array([1.0, 0.0, 0.0])  # eye at -x (left side view)


def sheet_cameras(
    projection: str = DEFAULT_PROJECTION,
    image_size=(256, 256),
    *,
    area=None,
    margin: float = 0.06,
) -> list[OrthoCamera]:
    """The four cameras of a three-view sheet laid out as ``projection`` places them, named
    ``front``, ``top``, ``side`` and ``iso`` (in that order), each owning one quadrant of
    ``area`` (row0, col0, h, w; default the whole image) as its viewport.

    first-angle: front top-left, top view below it, the view from the left (eye at -x) right
    of it, iso bottom-right. third-angle: top view top-left, front below it, the view from the
    right (eye at +x) right of the front, iso top-right. The top view has +x right and +y up in
    both. All panels share one scale, so a world length is the same number of pixels in each.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    h, w = image_size
    r0, c0, ah, aw = area if area is not None else (0, 0, h, w)
    hh, hw = ah // 2, aw // 2
    quads = {"tl": (r0, c0, hh, hw), "bl": (r0 + hh, c0, ah - hh, hw),
             "tr": (r0, c0 + hw, hh, aw - hw), "br": (r0 + hh, c0 + hw, ah - hh, aw - hw)}
    if projection == "first-angle":
        place, side_forward = {"front": "tl", "top": "bl", "side": "tr", "iso": "br"}, LEFT_FORWARD
    else:
        place, side_forward = {"front": "bl", "top": "tl", "side": "br", "iso": "tr"}, SIDE_FORWARD
    views = {"front": (FRONT_FORWARD, (0, 0, 1)), "top": (TOP_FORWARD, (0, 1, 0)),
             "side": (side_forward, (0, 0, 1)), "iso": (ISO_FORWARD, (0, 0, 1))}
    # One scale for all panels: the smallest quadrant's (they differ by a pixel on odd sizes).
    side = min(min(q[2], q[3]) for q in quads.values())
    cams = []
    for name, (forward, up) in views.items():
        vp = quads[place[name]]
        cam = OrthoCamera.looking(forward, image_size=image_size, viewport=vp, up=up, margin=margin, name=name)
        cams.append(replace(cam, scale=float(side * (1.0 - 2.0 * margin) / 2.0)))
    return cams


def three_view_cameras(image_size=(256, 256), projection: str = DEFAULT_PROJECTION) -> list[OrthoCamera]:
    """The whole image as one three-view sheet of ``projection`` (see `sheet_cameras`)."""
    return sheet_cameras(projection, image_size)


def rotate_in_plane(cam: OrthoCamera, degrees: float, pivot) -> OrthoCamera:
    """``cam`` after its image is turned ``degrees`` counter-clockwise (as seen on screen) about
    the pixel position ``pivot`` (u, v): the camera of a skewed scan. Right and up turn about the
    viewing direction and the principal point moves with the image, so the camera maps every 3D
    point exactly to where the turned image shows it. The viewport becomes the bounding box of
    the turned one, clipped to the image."""
    t = np.deg2rad(float(degrees))
    c, s = np.cos(t), np.sin(t)
    R = cam.R
    rot = np.stack([c * R[0] - s * R[1], s * R[0] + c * R[1], R[2]])  # (3, 3)

    def turn(u, v):  # image rows point down, so a counter-clockwise turn has this sign pattern
        du, dv = np.asarray(u, dtype=np.float64) - pivot[0], np.asarray(v, dtype=np.float64) - pivot[1]
        return pivot[0] + c * du + s * dv, pivot[1] - s * du + c * dv

    cx, cy = turn(*cam.principal)
    r0, c0, vh, vw = cam.viewport
    us, vs = turn([c0, c0 + vw, c0, c0 + vw], [r0, r0, r0 + vh, r0 + vh])
    h, w = cam.image_size
    top, left = max(int(np.floor(vs.min())), 0), max(int(np.floor(us.min())), 0)
    bottom, right = min(int(np.ceil(vs.max())), h), min(int(np.ceil(us.max())), w)
    return replace(cam, rotation=tuple(map(tuple, rot.tolist())), principal=(float(cx), float(cy)),
                   viewport=(top, left, max(bottom - top, 0), max(right - left, 0)))


def random_camera(rng: np.random.Generator, image_size=(256, 256), max_jitter_deg: float = 25.0) -> OrthoCamera:
    """An isometric-like view jittered in azimuth and elevation (augmentation)."""
    az = np.deg2rad(45.0 + rng.uniform(-max_jitter_deg, max_jitter_deg))
    el = np.deg2rad(35.264 + rng.uniform(-max_jitter_deg, max_jitter_deg))
    eye_dir = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    return OrthoCamera.looking(-eye_dir, image_size=image_size, name="random")


MAX_VIEWS = 4  # a three-view sheet's panels (front, top, side, iso)


def grid_projections(cameras, max_views: int = MAX_VIEWS) -> tuple[np.ndarray, np.ndarray]:
    """The drawing's cameras as models take them: (max_views, 2, 4) float32 grid projections
    (`OrthoCamera.grid_projection`, zero-padded) and (max_views,) bool, which views exist."""
    cams = list(cameras)[:max_views]
    grid = np.zeros((max_views, 2, 4), dtype=np.float32)
    if cams:
        grid[: len(cams)] = np.stack([c.grid_projection() for c in cams])
    return grid, np.arange(max_views) < len(cams)
