"""Synthetic warehouse scenes of cardboard packages, intact or damaged, with damage masks.

The detector is trained only on images rendered here. A scene is a random background
(conveyor belt, rollers, concrete floor, pallet, racking, wall or random texture) with one
to three cardboard boxes drawn as projected 3-D cuboids (top face plus the visible side
faces, each painted in its own texture space and warped into the image). Benign marks
(tape, labels, barcodes, print, marker, straps, dirt, stains, shadows, highlights) are drawn
on every box; damage (tears, dents, crushed corners, punctures, torn labels, torn tape)
only on damaged ones, and its pixels are recorded in the mask. Finally lighting, blur,
sensor noise and a JPEG round trip are applied to the image (not to the mask).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from . import _draw as D

_LOG = logging.getLogger(__name__)

DAMAGE_KINDS: tuple[str, ...] = (
    "tear",
    "dent",
    "crushed_corner",
    "puncture",
    "torn_label",
    "torn_tape",
)
_NK = len(DAMAGE_KINDS)
BACKGROUNDS: tuple[str, ...] = D.BACKGROUNDS
"""What a scene's boxes stand on or in front of (Scene.background)."""
F32 = np.float32


@dataclass(frozen=True, eq=False)
class Scene:
    """One rendered frame.

    Attributes:
        image: uint8 BGR image, shape ``(H, W, 3)``.
        mask: uint8 ``(H, W)``: 1 where visible damage is, else 0.
        damaged: True iff ``mask`` has any 1.
        kinds: Damage kinds visible in the frame (in ``DAMAGE_KINDS`` order; empty if intact).
        background: What the boxes stand on or in front of (one of ``BACKGROUNDS``; empty
            for a Scene built by hand).
    """

    image: np.ndarray
    mask: np.ndarray
    damaged: bool
    kinds: tuple[str, ...]
    background: str = ""


# ------------------------------------------------------------------------ box model

# Unit cuboid, z up: vertices 0-3 top (z=1), 4-7 bottom (z=0); x in [-.5, .5], y in [-.5, .5].
_VERTS = np.array(
    [[-0.5, -0.5, 1], [0.5, -0.5, 1], [0.5, 0.5, 1], [-0.5, 0.5, 1],
     [-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]],
    float,
)  # fmt: skip
# Faces as vertex quads (texture tl, tr, br, bl seen from outside, so print is not mirrored):
# top, front, right, back, left.
_FACES = ((3, 2, 1, 0), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7))
_NORMALS = np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0]], float)


@dataclass
class _Cam:
    """Camera shared by all boxes in a frame."""

    tilt: float  # radians from top-down
    persp: float  # strength of perspective foreshortening
    roll: float  # in-image rotation, radians
    light: np.ndarray  # (3,) world direction towards the light
    amb: float  # ambient fraction of face shading
    shadow: np.ndarray  # (2,) drop-shadow offset per pixel of box size
    shadow_blur: float
    shadow_strength: float


def _camera(
    rng: np.random.Generator, roll: float | None = None, max_tilt: float | None = None
) -> _Cam:
    """Random camera and light; ``roll``/``max_tilt`` (degrees) constrain it (conveyor)."""
    u = rng.random()
    tilt = (
        rng.uniform(0, 10) if u < 0.35 else rng.uniform(10, 35) if u < 0.8 else rng.uniform(35, 55)
    )
    if max_tilt is not None:
        tilt = rng.uniform(0, max_tilt)
    roll = rng.uniform(0, 2 * np.pi) if roll is None else roll
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.35)
    light = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    # drop shadow falls away from the light: ground offset (-lx, -ly) / lz, seen by the camera
    k = rng.uniform(0.05, 0.25) / max(light[2], 0.3)
    gx, gy = -light[0] * k, light[1] * k * math.cos(math.radians(tilt))
    cr, sr = math.cos(roll), math.sin(roll)
    return _Cam(
        tilt=math.radians(tilt),
        persp=rng.uniform(0.0, 0.25),
        roll=roll,
        light=light,
        amb=rng.uniform(0.45, 0.75),
        shadow=np.array([gx * cr - gy * sr, gx * sr + gy * cr]),
        shadow_blur=rng.uniform(0.01, 0.06),
        shadow_strength=rng.uniform(0.15, 0.55),
    )


@dataclass
class _Box:
    """A box placed in image coordinates."""

    dims: np.ndarray  # (3,) a, b, c in box units
    yaw: float
    pts: np.ndarray  # (8, 2) projected vertices in image pixels
    faces: list[int]  # visible faces, drawing order
    size: float  # sqrt of silhouette area in pixels
    cam: _Cam

    def extent(self) -> tuple[int, int, int, int]:
        """Integer bbox ``(x0, y0, x1, y1)`` of the box plus its drop shadow."""
        sv = self.cam.shadow * self.size
        blur = 3 * self.cam.shadow_blur * self.size + 2
        allp = np.vstack([self.pts, self.pts + sv])
        x0, y0 = np.floor(allp.min(0) - blur).astype(int)
        x1, y1 = np.ceil(allp.max(0) + blur).astype(int) + 1
        return int(x0), int(y0), int(x1), int(y1)


def _project(dims: np.ndarray, yaw: float, cam: _Cam) -> tuple[np.ndarray, list[int]]:
    """Project the cuboid; returns unit-scale (8, 2) image points and visible face ids."""
    p = _VERTS * dims
    cy, sy = math.cos(yaw), math.sin(yaw)
    x = p[:, 0] * cy - p[:, 1] * sy
    y = p[:, 0] * sy + p[:, 1] * cy
    z = p[:, 2] - dims[2] / 2
    ct, st = math.cos(cam.tilt), math.sin(cam.tilt)
    ix, iy = x, -(y * ct + z * st)
    depth = y * st - z * ct
    s = 1.0 / (1.0 + cam.persp * depth / max(dims.max(), 1e-6))
    ix, iy = ix * s, iy * s
    cr, sr = math.cos(cam.roll), math.sin(cam.roll)
    pts = np.stack([ix * cr - iy * sr, ix * sr + iy * cr], axis=1)
    # a face is visible when its (yawed) outward normal points towards the camera
    facing = (_NORMALS[:, 0] * sy + _NORMALS[:, 1] * cy) * st - _NORMALS[:, 2] * ct
    faces = [f for f in (1, 2, 3, 4, 0) if facing[f] < -0.08]
    return pts, faces


def _place(
    dims: np.ndarray, yaw: float, cam: _Cam, area: float, centre: tuple[float, float]
) -> _Box:
    pts, faces = _project(dims, yaw, cam)
    hull = cv2.convexHull(pts.astype(np.float32))
    k = math.sqrt(area / max(cv2.contourArea(hull), 1e-6))
    pts = pts * k
    pts = pts - (pts.min(0) + pts.max(0)) / 2 + centre
    return _Box(dims, yaw, pts, faces, math.sqrt(area), cam)


def _random_dims(rng: np.random.Generator) -> np.ndarray:
    return np.array([1.0, rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.9)])


# ------------------------------------------------------------------------ rendering


@dataclass
class _Sprite:
    """A rendered box: premultiplied colour, coverage, damage labels and drop shadow."""

    x0: int
    y0: int
    rgb: np.ndarray  # float32 (h, w, 3), premultiplied by alpha
    alpha: np.ndarray  # float32 (h, w)
    label: np.ndarray  # uint8 (h, w): damage kind id + 1
    shadow: np.ndarray  # float32 (h, w): darkening factor in [0, 1)


def _make_faces(box: _Box, rng: np.random.Generator) -> list[tuple[D.Face, np.ndarray]]:
    """Create cardboard faces with textures; returns (face, image quad) in drawing order."""
    base = D.box_colour(rng)
    flute_x = rng.random() < 0.5
    edges: dict[tuple[int, int], int] = {}
    for f in box.faces:
        q = _FACES[f]
        for i in range(4):
            e = (min(q[i], q[i - 1]), max(q[i], q[i - 1]))
            edges[e] = edges.get(e, 0) + 1
    cy, sy = math.cos(box.yaw), math.sin(box.yaw)
    lx, ly, lz = (float(v) for v in box.cam.light)
    amb = box.cam.amb
    wv = (_VERTS * box.dims).tolist()
    pts = box.pts.tolist()
    out = []
    for f in box.faces:
        q = _FACES[f]
        quad = [pts[i] for i in q]
        el = [math.dist(quad[1], quad[0]), math.dist(quad[2], quad[3])]
        el += [math.dist(quad[3], quad[0]), math.dist(quad[2], quad[1])]
        w, h = max(2, math.ceil(max(el[0], el[1]))), max(2, math.ceil(max(el[2], el[3])))
        # texture axes in the world (yawed box), for light direction and scale
        axes = []
        for j in (1, 3):
            dx, dy, dz = (wv[q[j]][k] - wv[q[0]][k] for k in range(3))
            rx, ry = dx * cy - dy * sy, dx * sy + dy * cy
            ln = math.sqrt(rx * rx + ry * ry + dz * dz)
            axes.append((rx / ln, ry / ln, dz / ln, ln))
        lu = [a[0] * lx + a[1] * ly + a[2] * lz for a in axes]
        lnorm = math.hypot(lu[0], lu[1])
        lt = np.array([lu[0] / lnorm, lu[1] / lnorm] if lnorm > 0.15 else [0.6, -0.8])
        nx, ny, nz = (float(v) for v in _NORMALS[f])
        ndotl = (nx * cy - ny * sy) * lx + (nx * sy + ny * cy) * ly + nz * lz
        shade = amb + (1 - amb) * max(0.0, ndotl)
        # grow the quad by 0.6 px so that neighbouring faces overlap instead of leaving seams
        cx, cyy = sum(p[0] for p in quad) / 4, sum(p[1] for p in quad) / 4
        qx = []
        for px, py in quad:
            d = math.hypot(px - cx, py - cyy) + 1e-6
            qx.append((px + 0.6 * (px - cx) / d, py + 0.6 * (py - cyy) / d))
        quad_x = np.array(qx)
        src = np.array(
            [[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], np.float32
        )
        to_img = cv2.getPerspectiveTransform(src, quad_x.astype(np.float32))
        free = tuple(
            i
            for i in range(4)
            if edges[(min(q[i], q[i - 1]), max(q[i], q[i - 1]))] == 1
            and edges[(min(q[i], q[(i + 1) % 4]), max(q[i], q[(i + 1) % 4]))] == 1
        )
        tex = D.cardboard(
            rng, h, w, base * F32(rng.uniform(0.95, 1.05)), flute_x if f == 0 else True
        )
        face = D.Face(
            tex,
            np.ones((h, w), F32),
            np.zeros((h, w), np.uint8),
            base,
            w / axes[0][3],
            f == 0,
            lt,
            to_img,
            free,
        )
        face.shade, face.side = shade, f
        out.append((face, quad_x))
    return out


def _decorate(faces: list[D.Face], rng: np.random.Generator) -> None:
    """Benign surface marks: seams, tape, labels, print, marker, straps, folds, hand holes."""
    rsc = rng.random() < 0.8
    tw = rng.uniform(0.07, 0.16)
    seam_tape = rsc and rng.random() < 0.85
    cross = seam_tape and rng.random() < 0.25
    style = D.pick(rng, [0.4, 0.4, 0.12, 0.08])
    for face in faces:
        h, w = face.h, face.w
        big = min(h, w) >= 10
        tpx = tw * face.unit
        if face.top:
            if rsc:
                gap = rng.uniform(0.5, 3.0)
                y = h / 2
                cv2.line(
                    face.tex, (0, int(y)), (w, int(y)), D.col(face.base * 0.45), max(1, int(gap))
                )
                if not seam_tape:
                    cv2.line(
                        face.tex,
                        (0, int(y + gap)),
                        (w, int(y + gap)),
                        D.col(np.minimum(face.base * 1.2, 255)),
                        1,
                    )
            if seam_tape:
                D.tape(face, rng, (-2, h / 2), (w + 2, h / 2), tpx, style)
            if cross:
                D.tape(face, rng, (w / 2, -2), (w / 2, h + 2), tpx, style)
            if rng.random() < 0.12:  # H-taping along the short edges
                for x in (tpx / 2, w - tpx / 2):
                    D.tape(face, rng, (x, -2), (x, h + 2), tpx, style)
        elif big:
            side_tape = seam_tape if face.side in (2, 4) else cross
            if side_tape:
                D.tape(face, rng, (w / 2, -2), (w / 2, h * rng.uniform(0.2, 0.5)), tpx, style)
            if rng.random() < 0.5:  # flap score line (straight crease)
                y = int(h * rng.uniform(0.08, 0.2))
                cv2.line(face.tex, (0, y), (w, y), D.col(face.base * 0.65), 1)
                cv2.line(
                    face.tex, (0, y + 1), (w, y + 1), D.col(np.minimum(face.base * 1.15, 255)), 1
                )
            if rng.random() < 0.15:
                D.hand_hole(face, rng)
        if not big:
            continue
        if rng.random() < (0.5 if face.top else 0.25):
            D.shipping_label(face, rng)
        if rng.random() < (0.3 if face.top else 0.55):
            D.print_marks(face, rng)
        if rng.random() < 0.12:
            ink = np.full(3, rng.uniform(10, 40), F32)
            bw, bh = int(w * rng.uniform(0.2, 0.45)), int(h * rng.uniform(0.08, 0.2))
            D.barcode(
                face.tex, rng, int(rng.uniform(0, w - bw)), int(rng.uniform(0, h - bh)), bw, bh, ink
            )
        if rng.random() < 0.25:
            D.marker(face, rng)
        if rng.random() < 0.08:
            D.strap(face, rng)
        if rng.random() < 0.15:  # straight fold line across the face (benign crease)
            if rng.random() < 0.5:
                p0, p1 = (rng.uniform(0, w), 0.0), (rng.uniform(0, w), float(h))
            else:
                p0, p1 = (0.0, rng.uniform(0, h)), (float(w), rng.uniform(0, h))
            pts = np.array([p0, p1], float)
            cv2.polylines(
                face.tex,
                [D.fp(pts + face.light)],
                False,
                D.col(np.minimum(face.base * 1.2, 255)),
                1,
                cv2.LINE_8,
                2,
            )
            cv2.polylines(
                face.tex, [D.fp(pts - face.light)], False, D.col(face.base * 0.6), 1, cv2.LINE_8, 2
            )


def _overlays(faces: list[D.Face], rng: np.random.Generator) -> None:
    """Benign marks drawn over everything, damage included: dirt, stains, light and shadow."""
    for face in faces:
        if min(face.h, face.w) < 10:
            continue
        for _ in range(D.pick(rng, [0.55, 0.3, 0.15])):
            D.smudge(face, rng, strong=rng.random() < 0.4)
        if rng.random() < 0.25:
            D.soft_light(face, rng)


def _damage(
    faces: list[D.Face], kinds: list[str], rng: np.random.Generator, frame: tuple[int, int] | None
) -> None:
    """Paint each damage kind on a suitable visible face, preferring in-frame positions."""
    ok = [f for f in faces if min(f.h, f.w) >= 14]
    if not ok:  # tiny images: fall back to the largest face if it is not a sliver
        big = max(faces, key=lambda f: f.h * f.w)
        if min(big.h, big.w) < 5:
            return
        ok = [big]
    wts = np.array([f.h * f.w * (2.0 if f.top else 1.0) for f in ok])
    for kind in kinds:
        # A torn label or torn tape damages a label or tape strip the box already has. Painting
        # a new one only on damaged scenes would make labels and tape themselves a sign of
        # damage (their intact twins lack them), and the detector would fire on every label.
        if kind == "torn_label":
            cand = [i for i, f in enumerate(ok) if f.labels]
        elif kind == "torn_tape":
            cand = [i for i, f in enumerate(ok) if f.tapes]
        else:
            cand = list(range(len(ok)))
        if not cand:  # nothing there to tear off: the board itself tears
            kind, cand = "tear", list(range(len(ok)))
        kid = DAMAGE_KINDS.index(kind) + 1
        face = ok[cand[D.pick(rng, wts[cand])]]
        face.damaged = True
        h, w = face.h, face.w
        # no smaller than ~4% of the face (and 6 px): what a camera could realistically see
        frac = math.exp(rng.uniform(math.log(0.04), math.log(0.22)))
        s = float(np.clip(math.sqrt(frac * h * w / math.pi), 6.0, 0.35 * min(h, w)))

        def inside(px: float, py: float, margin: float, face: D.Face = face) -> bool:
            if frame is None:
                return True
            v = face.to_img @ np.array([px, py, 1.0])
            x, y = v[0] / v[2], v[1] / v[2]
            return margin <= x < frame[1] - margin and margin <= y < frame[0] - margin

        if kind == "crushed_corner":
            corners = list(face.free_corners) + [c for c in range(4) if c not in face.free_corners]
            cpos = ((0, 0), (w, 0), (w, h), (0, h))
            good = [
                c
                for c in corners
                if inside(
                    cpos[c][0] + (s if c in (0, 3) else -s),
                    cpos[c][1] + (s if c in (0, 1) else -s),
                    2,
                )
            ]
            corner = good[0] if good else corners[0]
            cut = corner in face.free_corners and rng.random() < 0.8
            D.crushed_corner(face, rng, kid, corner, min(s * 1.3, 0.4 * min(h, w)), cut)
            continue
        m = min(s * 0.8, 0.45 * min(h, w))
        cx, cy = w / 2, h / 2
        lb = face.labels[int(rng.integers(len(face.labels)))] if kind == "torn_label" else None
        for _ in range(12):
            if lb is not None:  # a point on the label, which torn_label then rips
                cx, cy = rng.uniform(lb[0], lb[2]), rng.uniform(lb[1], lb[3])
            else:
                cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
            if inside(cx, cy, s * 0.4):
                break
        if kind == "tear":
            D.tear(face, rng, kid, cx, cy, s)
        elif kind == "dent":
            D.dent(face, rng, kid, cx, cy, s * 1.2)
        elif kind == "puncture":
            D.puncture(face, rng, kid, cx, cy, max(5.0, s * rng.uniform(0.45, 0.7)))
        elif kind == "torn_label":
            D.torn_label(face, rng, kid, cx, cy, s)
        else:
            D.torn_tape(face, rng, kid, cx, cy, s)


def _build_faces(
    box: _Box,
    rng: np.random.Generator,
    drng: np.random.Generator,
    kinds: list[str],
    frame: tuple[int, int] | None,
) -> list[tuple[D.Face, np.ndarray]]:
    """Paint a box's faces: cardboard, benign marks, damage, overlays and face shading."""
    fq = _make_faces(box, rng)
    faces = [f for f, _ in fq]
    _decorate(faces, rng)
    if kinds:
        _damage(faces, kinds, drng, frame)
    _overlays(faces, rng)
    for face in faces:
        face.tex *= F32(face.shade)
        if face.cut:
            face.tex *= D.g3(face.alpha)
    return fq


def _draw_faces(
    fq: list[tuple[D.Face, np.ndarray]],
    rgb: np.ndarray,
    lab: np.ndarray,
    alpha: np.ndarray | None,
    ox: int,
    oy: int,
) -> None:
    """Warp faces into ``rgb``/``lab`` (and accumulate coverage into ``alpha`` if given).

    ``rgb`` is either an opaque image or a premultiplied sprite canvas; both use
    ``rgb = rgb * (1 - a) + face_premultiplied``. ``(ox, oy)`` is the image position of the
    canvas origin.
    """
    ch, cw = lab.shape
    for face, quad in fq:
        b = D.bbox(quad - (ox, oy), 1, ch, cw)
        if b is None:
            continue
        bx0, by0, bx1, by1 = b
        m = np.array([[1, 0, -ox - bx0], [0, 1, -oy - by0], [0, 0, 1]], float) @ face.to_img
        dsize = (bx1 - bx0, by1 - by0)
        wr = cv2.warpPerspective(
            face.tex,
            m,
            dsize,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        a = cv2.warpPerspective(
            face.alpha,
            m,
            dsize,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        r = rgb[by0:by1, bx0:bx1]
        r *= D.g3(F32(1) - a)
        r += wr
        if alpha is not None:
            al = alpha[by0:by1, bx0:bx1]
            al *= F32(1) - a
            al += a
        cov = a > 0.5
        lr = lab[by0:by1, bx0:bx1]
        if face.damaged:
            lw = cv2.warpPerspective(
                face.label,
                m,
                dsize,
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            # the face's own pixels, plus a crushed corner's cut-away part (labelled, alpha 0)
            np.copyto(lr, lw, where=cov | (lw > 0))
        elif lr.any():
            lr[cov] = 0


def _shadow(box: _Box, ox: int, oy: int, h: int, w: int) -> tuple[int, int, np.ndarray] | None:
    """Soft drop shadow of the box (quarter-resolution raster) clipped to a canvas.

    Returns:
        ``(x0, y0, s)`` with float32 darkening ``s`` of shape ``(y1 - y0, x1 - x0)`` at canvas
        position ``(x0, y0)``, or None if it misses the canvas.
    """
    cam = box.cam
    ex0, ey0, ex1, ey1 = box.extent()
    x0, y0 = max(ex0 - ox, 0), max(ey0 - oy, 0)
    x1, y1 = min(ex1 - ox, w), min(ey1 - oy, h)
    if x1 <= x0 or y1 <= y0:
        return None
    q = 4
    sh, sw = y1 - y0, x1 - x0
    small: np.ndarray = np.zeros((sh // q + 2, sw // q + 2), F32)
    pts = np.vstack([box.pts, box.pts + cam.shadow * box.size]) - (ox + x0, oy + y0)
    hull = cv2.convexHull((pts / q).astype(np.float32))[:, 0]
    cv2.fillPoly(small, [D.fp(hull)], float(cam.shadow_strength), cv2.LINE_8, 2)
    small = cv2.GaussianBlur(small, (0, 0), max(0.5, cam.shadow_blur * box.size / q))
    big = cv2.resize(
        small, (small.shape[1] * q, small.shape[0] * q), interpolation=cv2.INTER_LINEAR
    )
    return x0, y0, big[:sh, :sw]


def _paste(img: np.ndarray, lab: np.ndarray, sp: _Sprite, dx: int) -> None:
    """Composite a sprite (its shadow, then the box) into ``img``/``lab``, shifted by ``dx``."""
    hh, ww = lab.shape
    x0, y0 = sp.x0 + dx, sp.y0
    h, w = sp.alpha.shape
    ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + w, ww), min(y0 + h, hh)
    if ax1 <= ax0 or ay1 <= ay0:
        return
    sl = (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0))
    r = img[ay0:ay1, ax0:ax1]
    a = sp.alpha[sl]
    r *= D.g3((F32(1) - sp.shadow[sl]) * (F32(1) - a))
    r += sp.rgb[sl]
    np.copyto(lab[ay0:ay1, ax0:ax1], sp.label[sl], where=a > 0.5)


def _pick_kinds(rng: np.random.Generator) -> list[str]:
    n = D.pick(rng, [0.6, 0.3, 0.1]) + 1
    return [DAMAGE_KINDS[int(i)] for i in rng.permutation(_NK)[:n]]


def _seed(seed: int) -> int:
    return int(seed) % (1 << 63)


def _compose(
    seed: int, attempt: int, h: int, w: int, damaged: bool, force: bool = False
) -> tuple[np.ndarray, np.ndarray, np.random.Generator, str]:
    """Background plus boxes; returns float image, label map, the scene generator and the
    background's kind.

    The layout depends on ``seed`` and ``attempt // 3`` only, the damage on ``attempt`` too;
    ``force`` makes a single large centred box (last resort for visible damage).
    """
    rng = np.random.default_rng([seed, 0, attempt // 3])
    drng = np.random.default_rng([seed, 1, attempt])
    img, background = D.background(rng, h, w)
    lab = np.zeros((h, w), np.uint8)
    cam = _camera(rng)
    n = D.pick(rng, [0.55, 0.3, 0.15]) + 1
    dom = int(rng.integers(n)) if rng.random() < 0.2 else n - 1
    boxes = []
    frame = float(h * w)
    lin = rng.uniform(0.35, 0.85)
    centre = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
    if force:
        n, dom, lin, centre = 1, 0, 0.75, (w / 2, h / 2)
    dom_box = _place(_random_dims(rng), rng.uniform(0, 2 * np.pi), cam, lin * lin * frame, centre)
    dx0, dy0, dx1, dy1 = dom_box.extent()
    for _ in range(n - 1):
        lin2 = rng.uniform(0.15, 0.45)
        dims, yaw = _random_dims(rng), rng.uniform(0, 2 * np.pi)
        for _try in range(6):
            b = _place(
                dims,
                yaw,
                cam,
                lin2 * lin2 * frame,
                (rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h),
            )
            x0, y0, x1, y1 = b.extent()
            ov = max(0, min(x1, dx1) - max(x0, dx0)) * max(0, min(y1, dy1) - max(y0, dy0))
            if ov < 0.3 * (x1 - x0) * (y1 - y0):
                break
        boxes.append(b)
    boxes.insert(dom, dom_box)
    for i, b in enumerate(boxes):
        kinds: list[str] = []
        if damaged and (i == dom or drng.random() < 0.15):
            kinds = _pick_kinds(drng)
        fq = _build_faces(b, rng, drng, kinds, (h, w))
        shd = _shadow(b, 0, 0, h, w)
        if shd is not None:
            sx, sy, sm = shd
            img[sy : sy + sm.shape[0], sx : sx + sm.shape[1]] *= D.g3(F32(1) - sm)
        _draw_faces(fq, img, lab, None, 0, 0)
    return img, lab, rng, background


def _scene(img: np.ndarray, lab: np.ndarray, background: str) -> Scene:
    mask = np.minimum(lab, 1)
    kinds: tuple[str, ...] = ()
    if mask.any():
        counts = np.bincount(lab[lab > 0], minlength=_NK + 1)
        kinds = tuple(k for i, k in enumerate(DAMAGE_KINDS) if counts[i + 1] > 0)
    return Scene(image=img, mask=mask, damaged=bool(kinds), kinds=kinds, background=background)


def render_scene(
    seed: int, height: int = 256, width: int = 256, *, damaged: bool | None = None
) -> Scene:
    """Render one random warehouse scene with 1-3 cardboard boxes.

    Deterministic: the same arguments give byte-identical image and mask. With the same
    seed, ``damaged=True`` and ``damaged=False`` give the same layout, except that
    damage is painted (very rarely the layout changes if damage would not be visible).

    Args:
        seed: Any integer.
        height: Image height in pixels (>= 32).
        width: Image width in pixels (>= 32).
        damaged: Whether the dominant box is damaged; None lets the seed decide (~50%).

    Returns:
        Scene with ``image`` uint8 ``(height, width, 3)`` BGR and ``mask`` uint8
        ``(height, width)``.
    """
    if height < 32 or width < 32:
        raise ValueError(f"image too small: {height}x{width}")
    s = _seed(seed)
    if damaged is None:
        damaged = bool(np.random.default_rng([s, 2]).random() < 0.5)
    # damage must be visibly large: ~10x10 px at 256x256, scaled with the image area
    min_px = max(4, int(0.0016 * height * width))
    best: tuple[int, np.ndarray, np.ndarray, np.random.Generator, str] | None = None
    for attempt in range(9):
        img, lab, rng, bg = _compose(s, attempt, height, width, damaged, force=attempt == 8)
        if not damaged:
            best = (0, img, lab, rng, bg)
            break
        count = int(np.count_nonzero(lab))
        if best is None or count > best[0]:
            best = (count, img, lab, rng, bg)
        if count >= min_px:
            break
        _LOG.debug("seed %d attempt %d: damage not visible enough, retrying", seed, attempt)
    assert best is not None
    _, img, lab, rng, background = best
    return _scene(D.finish(img, rng), lab, background)


# ------------------------------------------------------------------------- conveyor


@dataclass
class _Pkg:
    start: int  # belt coordinate of the footprint's left edge
    length: int  # footprint length along the belt (incl. shadow)
    box: _Box  # placed with footprint left edge at x = 0
    key: tuple[int, int]
    damaged: bool


class Conveyor:
    """An endless synthetic conveyor-belt video for the demo source.

    Packages ride left to right across a belt at constant speed; roughly every third or
    fourth package is damaged and new packages keep arriving. Everything is deterministic
    from ``seed`` and frames can be accessed in any order (the package schedule is laid out
    in fixed-length belt blocks, each generated from its own seed).

    Args:
        seed: Any integer.
        height: Frame height in pixels.
        width: Frame width in pixels.
        fps: Nominal frame rate; a package crosses the frame in about 3-5 seconds.
    """

    def __init__(
        self, seed: int = 0, height: int = 360, width: int = 640, fps: float = 15.0
    ) -> None:
        if height < 32 or width < 32 or fps <= 0:
            raise ValueError("bad conveyor geometry")
        self.seed = _seed(seed)
        self.height, self.width, self.fps = height, width, fps
        rng = np.random.default_rng([self.seed, 7])
        self._period = width
        self._static, self._y0, self._y1, self._tile = D.belt_parts(rng, height, width, width)
        self._light = D.lighting(rng, height, width)
        self._noise = rng.uniform(0.8, 3.0)
        self._speed = width / (fps * rng.uniform(3.0, 5.0))
        self._cam = _camera(rng, roll=0.0, max_tilt=30.0)
        self._block = 4 * width
        self._blocks: OrderedDict[int, list[_Pkg]] = OrderedDict()
        self._sprites: OrderedDict[tuple[int, int], _Sprite] = OrderedDict()

    def _packages(self, j: int) -> list[_Pkg]:
        if j in self._blocks:
            self._blocks.move_to_end(j)
            return self._blocks[j]
        rng = np.random.default_rng([self.seed, 8, j % (1 << 62)])
        belt_h = max(self._y1 - self._y0, 16)
        pos = j * self._block + rng.uniform(0.05, 0.5) * self.width
        pkgs = []
        i = 0
        while True:
            dims = _random_dims(rng)
            yaw = rng.normal(0, 0.15) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
            lin = rng.uniform(0.45, 0.75) * min(belt_h, self.height)
            box = _place(dims, yaw, self._cam, lin * lin, (0.0, 0.0))
            x0, y0, x1, y1 = box.extent()
            length = x1 - x0
            if pos + length > (j + 1) * self._block:
                break
            lo, hi = self._y0 - y0, self._y1 - y1
            cy = rng.uniform(lo, hi) if hi > lo else (lo + hi) / 2
            box.pts = box.pts + np.array([-x0, cy])
            pkgs.append(_Pkg(int(pos), length, box, (j, i), bool(rng.random() < 0.2)))
            pos += length + rng.uniform(0.05, 0.6) * self.width
            i += 1
        if pkgs and not any(p.damaged for p in pkgs):  # at least one damaged package per block
            pkgs[int(rng.integers(len(pkgs)))].damaged = True
        self._blocks[j] = pkgs
        while len(self._blocks) > 8:
            self._blocks.popitem(last=False)
        return pkgs

    def _sprite(self, pkg: _Pkg) -> _Sprite:
        if pkg.key in self._sprites:
            self._sprites.move_to_end(pkg.key)
            return self._sprites[pkg.key]
        j, i = pkg.key
        rng = np.random.default_rng([self.seed, 9, j % (1 << 62), i])
        drng = np.random.default_rng([self.seed, 10, j % (1 << 62), i])
        kinds = _pick_kinds(drng) if pkg.damaged else []
        x0, y0, x1, y1 = pkg.box.extent()
        h, w = y1 - y0, x1 - x0
        sp = _Sprite(
            x0,
            y0,
            np.zeros((h, w, 3), F32),
            np.zeros((h, w), F32),
            np.zeros((h, w), np.uint8),
            np.zeros((h, w), F32),
        )
        shd = _shadow(pkg.box, x0, y0, h, w)
        if shd is not None:
            sx, sy, sm = shd
            sp.shadow[sy : sy + sm.shape[0], sx : sx + sm.shape[1]] = sm
        _draw_faces(
            _build_faces(pkg.box, rng, drng, kinds, None), sp.rgb, sp.label, sp.alpha, x0, y0
        )
        self._sprites[pkg.key] = sp
        while len(self._sprites) > 24:
            self._sprites.popitem(last=False)
        return sp

    def frame(self, index: int) -> Scene:
        """Render frame number ``index`` (any non-negative or negative integer).

        Returns:
            Scene with ``image`` uint8 ``(height, width, 3)`` and ``mask`` uint8
            ``(height, width)``.
        """
        shift = round(self._speed * index)
        img = self._static.copy()
        if self._tile is not None:
            off = (-shift) % self._period
            img[self._y0 : self._y1] = self._tile[:, off : off + self.width]
        lab = np.zeros((self.height, self.width), np.uint8)
        lo, hi = shift - self.width, shift
        for j in range(math.floor(lo / self._block) - 1, math.floor(hi / self._block) + 1):
            for pkg in self._packages(j):
                if pkg.start < hi and pkg.start + pkg.length > lo:
                    _paste(img, lab, self._sprite(pkg), shift - pkg.start - pkg.length)
        img *= self._light
        rng = np.random.default_rng([self.seed, 11, index % (1 << 62)])
        out = D.add_noise(img, rng, self._noise)
        return _scene(out, lab, "belt")
