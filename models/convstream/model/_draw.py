"""Drawing helpers for :mod:`convstream.model.scenes` (numpy + cv2 only).

Images are float32 BGR arrays of shape ``(H, W, 3)`` with values in ``[0, 255]`` unless
stated otherwise. All randomness comes from a ``numpy.random.Generator`` passed in by the
caller; the only module state is a set of noise banks built once from a fixed seed, from
which random crops are taken (much faster than drawing fresh noise for every image).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

Rng = np.random.Generator
F32 = np.float32
_BANK_H, _BANK_W = 1024, 2048
_AA = cv2.LINE_8
_SH = 2  # fixed-point fractional bits for polygon/line coordinates
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN)
_WORDS = (
    "THIS SIDE UP",
    "FRAGILE",
    "HANDLE WITH CARE",
    "KEEP DRY",
    "UP",
    "NET WT 12KG",
    "MADE IN EU",
    "BOX 24x18",
    "HEAVY",
    "DO NOT STACK",
    "ORDER 4471",
    "PCS 12",
    "SKU A-2041",
    "EXPRESS",
)


# --------------------------------------------------------------------------- noise


def _unit(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    return (a / (a.std() + 1e-6)).astype(F32)


@functools.cache
def _banks() -> dict[str, np.ndarray]:
    """Fixed-seed noise banks, each float32 ``(1024, 2048)``, zero mean and unit std."""
    rng = np.random.default_rng(0x5CE7E)
    size = (_BANK_W, _BANK_H)

    def up(n: int) -> np.ndarray:
        g = rng.standard_normal((n, 2 * n), dtype=F32)
        return _unit(cv2.resize(g, size, interpolation=cv2.INTER_CUBIC))

    fine = rng.standard_normal((_BANK_H, _BANK_W), dtype=F32)
    grain = _unit(cv2.blur(rng.standard_normal((_BANK_H, _BANK_W), dtype=F32), (41, 1)))
    return {"fine": fine, "mid": up(96), "blob": up(14), "grain": grain}


def noise(rng: Rng, kind: str, h: int, w: int, scale: float = 1.0) -> np.ndarray:
    """Random crop of a noise bank.

    Args:
        rng: Random generator.
        kind: One of ``"fine"`` (white), ``"mid"`` (~8 px blobs), ``"blob"`` (~70 px blobs),
            ``"grain"`` (horizontal streaks).
        h: Output height.
        w: Output width.
        scale: Spatial magnification (> 1 makes features larger).

    Returns:
        float32 ``(h, w)``; may be a read-only view into the bank, do not modify in place.
    """
    bank = _banks()[kind]
    ch, cw = h, w
    if scale != 1.0:
        ch, cw = max(2, int(h / scale) + 1), max(2, int(w / scale) + 1)
    if ch > _BANK_H or cw > _BANK_W:
        bank = np.tile(bank, (-(-ch // _BANK_H), -(-cw // _BANK_W)))
    y = int(rng.integers(0, bank.shape[0] - ch + 1))
    x = int(rng.integers(0, bank.shape[1] - cw + 1))
    out = bank[y : y + ch, x : x + cw]
    if (ch, cw) != (h, w):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


def pick(rng: Rng, p: tuple[float, ...] | list[float] | np.ndarray) -> int:
    """Index drawn with probabilities ``p`` (much cheaper than ``rng.choice(n, p=p)``)."""
    u = rng.random() * float(sum(p))
    acc = 0.0
    for i, x in enumerate(p):
        acc += float(x)
        if u < acc:
            return i
    return len(p) - 1


def sign(rng: Rng) -> float:
    """Random -1.0 or 1.0."""
    return 1.0 if rng.random() < 0.5 else -1.0


def lowres(rng: Rng, h: int, w: int, cells: int, amp: float) -> np.ndarray:
    """Smooth random field ``1 + amp * U(-1, 1)`` upsampled from a ``cells x cells`` grid.

    Returns:
        float32 ``(h, w)``.
    """
    g = rng.uniform(-amp, amp, (cells, cells)).astype(F32) + F32(1.0)
    # cubic at full size is slow in cv2: cubic to a small grid, then bilinear
    mid = cv2.resize(g, (min(w, 32), min(h, 32)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR)


# ------------------------------------------------------------------------ geometry


def fp(pts: np.ndarray) -> np.ndarray:
    """Float ``(N, 2)`` points -> int32 fixed point for cv2 drawing with ``shift=_SH``."""
    return np.round(np.asarray(pts) * (1 << _SH)).astype(np.int32)


def col(c: np.ndarray | float) -> tuple[float, float, float]:
    """Colour as a cv2 scalar tuple."""
    if isinstance(c, int | float):
        return (float(c), float(c), float(c))
    a = c.tolist()
    return (float(a[0]), float(a[1]), float(a[2]))


def g3(x: np.ndarray) -> np.ndarray:
    """float32 ``(h, w)`` -> ``(h, w, 3)`` copy on every channel.

    Broadcasting ``x[..., None]`` against ``(h, w, 3)`` makes numpy loop over 3-element inner
    rows, which is an order of magnitude slower than operating on full 3-channel arrays.
    """
    if x.dtype != F32:
        x = x.astype(F32)
    return cv2.cvtColor(x, cv2.COLOR_GRAY2BGR)


def cmul(x: np.ndarray, c) -> np.ndarray:
    """``x * c`` for a per-channel colour ``c``: ``x`` is ``(h, w, 3)`` or ``(h, w)``."""
    if x.ndim == 2:
        x = g3(x)
    elif x.dtype != F32:
        x = x.astype(F32)
    return cv2.transform(x, np.diag(np.asarray(c, F32)[:3]))


def row(c, w: int) -> np.ndarray:
    """Colour ``c`` repeated along a row, float32 ``(1, w, 3)``.

    Use it instead of a ``(3,)`` colour when operating on ``(h, w, 3)`` arrays: numpy then
    loops over whole rows instead of 3-element pixels.
    """
    return np.tile(np.asarray(c, F32)[:3], w).reshape(1, w, 3)


def put(dst: np.ndarray, src: np.ndarray, m: np.ndarray) -> None:
    """In place: ``dst[m] = src[m]`` for ``(h, w, 3)`` arrays and a ``(h, w)`` mask."""
    m3 = cv2.cvtColor(m.astype(np.uint8), cv2.COLOR_GRAY2BGR).view(bool)
    np.copyto(dst, src, where=m3)


def jagged(
    rng: Rng,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    ang: float,
    n: int,
    rough: float,
    wobble: float = 0.2,
) -> np.ndarray:
    """Irregular closed polygon around an ellipse.

    Returns:
        float64 ``(n, 2)`` polygon vertices.
    """
    t = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2.0 * np.pi / n)
    r = 1.0 + rough * rng.uniform(-1.0, 1.0, n)
    for k in (2, 3):
        r += wobble * rng.uniform(-0.5, 0.5) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    x, y = rx * r * np.cos(t), ry * r * np.sin(t)
    ca, sa = math.cos(ang), math.sin(ang)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], axis=1)


def ragged(rng: Rng, p0: npt.ArrayLike, p1: npt.ArrayLike, n: int, amp: float) -> np.ndarray:
    """Ragged polyline from ``p0`` to ``p1`` with ``n`` points jittered sideways by ``amp``.

    Returns:
        float64 ``(n, 2)``.
    """
    a, b = np.asarray(p0, float), np.asarray(p1, float)
    t = np.linspace(0.0, 1.0, n)[:, None]
    d = b - a
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    off = rng.uniform(-amp, amp, (n, 1))
    off[0] = off[-1] = 0.0
    return a + d * t + nrm * off


def walk(rng: Rng, p0: np.ndarray, n: int, step: float, turn: float) -> np.ndarray:
    """Random-walk polyline of ``n`` points starting at ``p0``.

    Returns:
        float64 ``(n, 2)``.
    """
    a = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.uniform(-turn, turn, n - 1))
    steps = step * rng.uniform(0.6, 1.4, n - 1)[:, None] * np.stack([np.cos(a), np.sin(a)], 1)
    return np.vstack([p0, p0 + np.cumsum(steps, axis=0)])


def bbox(pts: np.ndarray, pad: float, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Clipped integer bounding box ``(x0, y0, x1, y1)`` of points, or None if empty."""
    x0 = max(math.floor(pts[:, 0].min() - pad), 0)
    y0 = max(math.floor(pts[:, 1].min() - pad), 0)
    x1 = min(math.ceil(pts[:, 0].max() + pad) + 1, w)
    y1 = min(math.ceil(pts[:, 1].max() + pad) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def grid(x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable float32 pixel coordinates: xs ``(1, x1 - x0)`` and ys ``(y1 - y0, 1)``."""
    return np.arange(x0, x1, dtype=F32)[None, :], np.arange(y0, y1, dtype=F32)[:, None]


def poly_mask(pts: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 ``(y1 - y0, x1 - x0)`` mask with the polygon filled with 1, in box coordinates."""
    x0, y0, x1, y1 = box
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(m, [fp(pts - (x0, y0))], 1, _AA, _SH)
    return m


# ------------------------------------------------------------------------- faces


@dataclass
class Face:
    """One visible box face, painted in its own rectangular texture space.

    Attributes:
        tex: float32 ``(h, w, 3)`` BGR texture.
        alpha: float32 ``(h, w)`` coverage (0 where a crushed corner was cut away).
        label: uint8 ``(h, w)`` damage kind id + 1 per pixel, 0 for intact.
        base: float32 ``(3,)`` cardboard colour.
        unit: Pixels per box unit along the texture's x axis.
        top: Whether this is the top face.
        light: float ``(2,)`` unit vector pointing towards the light, in texture coords.
        to_img: 3x3 homography from texture to image coordinates.
        free_corners: Corner indices (0 tl, 1 tr, 2 br, 3 bl) on the box silhouette.
        labels: Shipping labels drawn, as ``(x0, y0, x1, y1, colour)``.
        tapes: Tape strips drawn, as ``(p0, p1, width, colour, clear)``.
        shade: Lambertian shading factor of the face.
        side: Face id in the box model (0 top, 1-4 sides).
        cut: Whether part of the face was cut away (``alpha`` not all ones).
        damaged: Whether any damage was painted on the face.
    """

    tex: np.ndarray
    alpha: np.ndarray
    label: np.ndarray
    base: np.ndarray
    unit: float
    top: bool
    light: np.ndarray
    to_img: np.ndarray
    free_corners: tuple[int, ...] = ()
    labels: list[tuple] = field(default_factory=list)
    tapes: list[tuple] = field(default_factory=list)
    shade: float = 1.0
    side: int = 0
    cut: bool = False
    damaged: bool = False

    @property
    def h(self) -> int:
        return self.tex.shape[0]

    @property
    def w(self) -> int:
        return self.tex.shape[1]


def blend(face_tex: np.ndarray, x0: int, y0: int, m: np.ndarray, colour, opacity: float) -> None:
    """In place: ``tex = tex + (colour - tex) * m * opacity`` over the box at ``(x0, y0)``."""
    r = face_tex[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
    m3 = g3(m * F32(opacity))
    r *= F32(1) - m3
    r += cmul(m3, colour)


def soft(m: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float32 ``(h, w)`` map; large sigmas are done at quarter size."""
    h, w = m.shape
    if sigma < 3.0 or min(h, w) < 16:
        return cv2.GaussianBlur(m, (0, 0), sigma)
    small = cv2.resize(m, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / 4)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def blend_u8(face_tex: np.ndarray, m: np.ndarray, colour, opacity: float) -> None:
    """Like :func:`blend` for a full-size uint8 mask (255 = full), only over its bounding box."""
    x, y, w, h = cv2.boundingRect(m)
    if w and h:
        blend(face_tex, x, y, m[y : y + h, x : x + w] * F32(opacity / 255.0), colour, 1.0)


def cardboard(rng: Rng, h: int, w: int, base: np.ndarray, flute_x: bool) -> np.ndarray:
    """Cardboard texture: fine noise, mottling, faint corrugation, edge darkening, gradient.

    Returns:
        float32 ``(h, w, 3)``.
    """
    u = rng.uniform(0.0, 1.0, 8)
    lum = cv2.addWeighted(
        noise(rng, "fine", h, w),
        0.012 + 0.033 * u[0],
        noise(rng, "mid", h, w),
        0.01 + 0.03 * u[1],
        1.0,
    )
    lum = cv2.scaleAdd(noise(rng, "blob", h, w), 0.01 + 0.05 * u[2], lum)
    # separable profiles: edge darkening, linear gradient and corrugation (flute) ripple
    er, ea = 1.0 + (0.05 * min(h, w) + 1.0) * u[3], 0.04 + 0.18 * u[4]
    n = w + h
    t = np.arange(n, dtype=np.float64)
    t[w:] -= w
    size = np.where(np.arange(n) < w, w, h)
    prof = 1.0 - ea * (np.exp(-t / er) + np.exp((t - (size - 1)) / er))
    prof += (u[5] - 0.5) * 0.16 * (t / size - 0.5)
    ripple = 1.0 + 0.035 * u[6] * np.sin(t * (2 * np.pi / (2.6 + 3.4 * u[7])))
    prof *= np.where((np.arange(n) < w) == flute_x, ripple, 1.0)
    prof32 = prof.astype(F32)
    lum *= prof32[None, :w]
    lum *= prof32[w:, None]
    return cmul(lum, base)


BOX_COLOURS = np.array(
    [
        [80, 128, 178],  # kraft
        [95, 140, 185],  # kraft light
        [118, 163, 200],  # tan
        [150, 188, 218],  # light
        [200, 210, 218],  # white-ish
        [225, 228, 230],  # white
        [55, 88, 128],  # dark
        [70, 95, 140],  # red-brown
        [128, 138, 146],  # grey board
    ],
    F32,
)
_BOX_W = (0.24, 0.2, 0.16, 0.1, 0.07, 0.05, 0.08, 0.06, 0.04)


def box_colour(rng: Rng) -> np.ndarray:
    """Random cardboard colour, float32 ``(3,)`` BGR."""
    c = BOX_COLOURS[pick(rng, _BOX_W)]
    c = c * F32(rng.uniform(0.85, 1.12)) * rng.uniform(0.95, 1.05, 3).astype(F32)
    return np.clip(c, 20, 245).astype(F32)


def _ink_colour(rng: Rng) -> np.ndarray:
    choices = ([25, 25, 25], [45, 40, 40], [40, 40, 170], [140, 60, 20], [50, 110, 40])
    c = np.array(choices[pick(rng, [0.5, 0.15, 0.15, 0.12, 0.08])], F32)
    return c * F32(rng.uniform(0.7, 1.2))


# --------------------------------------------------------------------- benign marks


def tape(face: Face, rng: Rng, p0, p1, width: float, style: int) -> None:
    """Packing tape strip from ``p0`` to ``p1`` (style 0 clear, 1 brown, 2 white, 3 dark)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    ln = np.hypot(*d) + 1e-9
    n = np.array([-d[1], d[0]]) / ln * (width / 2)
    quad = np.array([p0 + n, p1 + n, p1 - n, p0 - n])
    box = bbox(quad, 1, face.h, face.w)
    if box is None:
        return
    x0, y0, x1, y1 = box
    aligned = abs(d[0]) < 1e-9 or abs(d[1]) < 1e-9
    m = None if aligned else poly_mask(quad, box)
    r = face.tex[y0:y1, x0:x1]
    xx, yy = grid(x0, y0, x1, y1)
    px, py, nx, ny = float(p0[0]), float(p0[1]), float(n[0]), float(n[1])
    across = ((xx - px) * nx + (yy - py) * ny) * (1.0 / (width / 2) ** 2)  # -1..1
    if style == 0:
        streak = 0.5 + 0.5 * np.cos(across * F32(rng.uniform(2, 7)) + F32(rng.uniform(0, 6)))
        gloss = F32(rng.uniform(0.05, 0.3)) * streak**3 + F32(rng.uniform(0.02, 0.08))
        gl = g3(gloss)
        new = r * (F32(rng.uniform(0.9, 1.0)) - gl) + F32(255) * gl
        tcol = np.mean(face.base) * np.ones(3, F32)
    else:
        if style == 1:
            tcol = np.array([45, 105, 160], F32) * F32(rng.uniform(0.75, 1.25))
        elif style == 2:
            tcol = np.array([225, 228, 232], F32) * F32(rng.uniform(0.85, 1.05))
        else:
            tcol = np.array([40, 40, 40], F32) * rng.uniform(0.6, 1.6, 3).astype(F32)
        shade = 1.0 + F32(0.06) * noise(rng, "grain", y1 - y0, x1 - x0) - F32(0.05) * across**2
        new = cmul(shade, tcol)
        op = rng.uniform(0.8, 0.97)
        new = r + (new - r) * F32(op)
        if style == 2 and rng.random() < 0.6:  # printed tape: repeated text blocks
            period, bar = rng.uniform(12, 30), rng.uniform(0.3, 0.6)
            along = ((xx - px) * float(d[0]) + (yy - py) * float(d[1])) * (1.0 / ln)
            on = ((along % period) < period * bar) & (np.abs(across) < 0.45)
            ink = np.array([40, 40, 190] if rng.random() < 0.5 else [150, 60, 20], F32)
            new[on] = new[on] * F32(0.25) + ink * F32(0.75)
    if m is None:
        r[:] = new
    else:
        put(r, new, m > 0)
    edge = col(np.asarray(tcol) * 0.8)
    for s in (1, -1):
        e = np.array([p0 + s * n, p1 + s * n])
        cv2.polylines(face.tex, [fp(e)], False, edge, 1, _AA, _SH)
    face.tapes.append((p0, p1, width, np.asarray(tcol, F32), style == 0))


def barcode(tex: np.ndarray, rng: Rng, x0: int, y0: int, w: int, h: int, ink) -> None:
    """Vertical-bar barcode in the rectangle, clipped to the texture."""
    x1, y1 = min(x0 + w, tex.shape[1]), min(y0 + h, tex.shape[0])
    x0, y0 = max(x0, 0), max(y0, 0)
    if x1 - x0 < 3 or y1 - y0 < 2:
        return
    widths = rng.integers(1, 4, size=x1 - x0)
    cols = np.repeat(np.arange(widths.size) % 2 == 0, widths)[: x1 - x0]
    tex[y0:y1, x0:x1][:, cols] = np.asarray(ink, F32)


def shipping_label(
    face: Face, rng: Rng, cx: float | None = None, cy: float | None = None, lw: float | None = None
) -> tuple[int, int, int, int]:
    """White shipping label with text lines and a barcode; returns its rectangle."""
    fw, fh = face.w, face.h
    lw = lw if lw is not None else rng.uniform(0.22, 0.55) * fw
    lw = float(np.clip(lw, min(10, fw * 0.8), fw * 0.9))
    lh = float(np.clip(lw * rng.uniform(0.5, 1.4), min(8, fh * 0.8), fh * 0.85))
    cx = cx if cx is not None else rng.uniform(lw / 2, fw - lw / 2)
    cy = cy if cy is not None else rng.uniform(lh / 2, fh - lh / 2)
    x0, y0 = int(np.clip(cx - lw / 2, 0, fw - 2)), int(np.clip(cy - lh / 2, 0, fh - 2))
    x1, y1 = min(int(x0 + lw), fw), min(int(y0 + lh), fh)
    kind = rng.random()
    if kind < 0.7:
        lc = np.full(3, rng.uniform(222, 250), F32)
    elif kind < 0.85:
        lc = np.array([200, 235, 242], F32) * F32(rng.uniform(0.9, 1.03))
    else:
        lc = np.array(([60, 200, 240], [70, 140, 240], [225, 200, 235])[int(rng.integers(3))], F32)
    r = face.tex[y0:y1, x0:x1]
    r[:] = cmul(F32(1.0) + F32(0.015) * noise(rng, "fine", y1 - y0, x1 - x0), lc)
    ink = np.full(3, rng.uniform(10, 50), F32)
    h, w = y1 - y0, x1 - x0
    mg = max(1, int(0.07 * w))
    y = y0 + mg
    if rng.random() < 0.35 and h > 16:  # inverted header bar
        bh = max(2, int(0.12 * h))
        face.tex[y : y + bh, x0 + mg : x1 - mg] = ink
        y += bh + max(1, bh // 2)
    sp = max(3, int(rng.uniform(0.05, 0.1) * h))
    bar_h = int(rng.uniform(0.15, 0.3) * h) if rng.random() < 0.8 else 0
    text_end = y1 - mg - bar_h - (sp if bar_h else 0)
    th = max(1, int(sp * rng.uniform(0.3, 0.5)))
    while y + th <= text_end:
        x = x0 + mg
        xe = x0 + mg + int((w - 2 * mg) * rng.uniform(0.3, 1.0))
        # one row of "words": random run lengths of ink separated by th-wide gaps
        runs = rng.integers(max(2, 2 * th), max(3 * th, w // 3) + 1, size=w // (2 * th) + 2)
        gap = max(1, th)
        on = np.repeat(
            np.tile([True, False], runs.size), np.ravel(np.c_[runs, np.full_like(runs, gap)])
        )[: xe - x]
        if on.any():
            face.tex[y : y + th, x:xe][:, on] = ink
        if rng.random() < 0.15 and y + 2 * sp < text_end:
            cv2.line(face.tex, (x0 + 1, y + sp), (x1 - 2, y + sp), col(ink), 1)
            y += sp
        y += sp
    if bar_h:
        bw = int((w - 2 * mg) * rng.uniform(0.6, 1.0))
        barcode(face.tex, rng, x0 + mg, y1 - mg - bar_h, bw, bar_h, ink)
    if rng.random() < 0.6:  # thin shadow / thickness edge on one side
        s = face.light
        ex = x1 if s[0] < 0 else x0 - 1
        ey = y1 if s[1] < 0 else y0 - 1
        dark = col(face.base * 0.7)
        cv2.line(face.tex, (ex, y0), (ex, y1), dark, 1)
        cv2.line(face.tex, (x0, ey), (x1, ey), dark, 1)
    face.labels.append((x0, y0, x1, y1, lc))
    return x0, y0, x1, y1


def _icon(m: np.ndarray, rng: Rng, kind: int, cx: float, cy: float, s: float) -> None:
    """Draw a pictogram of size ``s`` centred at ``(cx, cy)`` into uint8 mask ``m`` (255 = ink)."""
    c = np.array([cx, cy])
    if kind == 0:  # THIS SIDE UP arrows
        for dx in (-0.28, 0.28):
            o = c + np.array([dx * s, 0.0])
            head = np.array([[0, -0.5], [0.22, -0.15], [-0.22, -0.15]]) * s + o
            cv2.fillPoly(m, [fp(head)], 255, _AA, _SH)
            shaft = np.array([[-0.08, -0.16], [0.08, -0.16], [0.08, 0.35], [-0.08, 0.35]]) * s + o
            cv2.fillPoly(m, [fp(shaft)], 255, _AA, _SH)
        bar = np.array([[-0.5, 0.42], [0.5, 0.42], [0.5, 0.5], [-0.5, 0.5]]) * s + c
        cv2.fillPoly(m, [fp(bar)], 255, _AA, _SH)
    elif kind == 1:  # fragile glass, sometimes with a printed crack
        cup = (int(cx), int(cy - 0.2 * s))
        ax = (max(1, int(0.27 * s)), max(1, int(0.3 * s)))
        cv2.ellipse(m, cup, ax, 0, 0, 180, 255, -1)
        cv2.rectangle(
            m, (cup[0] - ax[0], cup[1] - max(1, int(0.15 * s))), (cup[0] + ax[0], cup[1]), 255, -1
        )
        t = max(1, int(0.06 * s))
        cv2.line(m, (int(cx), cup[1] + ax[1]), (int(cx), int(cy + 0.4 * s)), 255, t)
        cv2.line(
            m,
            (int(cx - 0.2 * s), int(cy + 0.42 * s)),
            (int(cx + 0.2 * s), int(cy + 0.42 * s)),
            255,
            t,
        )
        if rng.random() < 0.6:
            crack = ragged(
                rng, [cx - 0.05 * s, cy - 0.35 * s], [cx + 0.05 * s, cy + 0.05 * s], 5, 0.12 * s
            )
            cv2.polylines(m, [fp(crack)], False, 0, max(1, int(0.04 * s)), _AA, _SH)
    elif kind == 2:  # umbrella (keep dry)
        cv2.ellipse(m, (int(cx), int(cy)), (int(0.42 * s), int(0.3 * s)), 0, 180, 360, 255, -1)
        t = max(1, int(0.05 * s))
        cv2.line(m, (int(cx), int(cy)), (int(cx), int(cy + 0.4 * s)), 255, t)
        cv2.ellipse(
            m,
            (int(cx - 0.08 * s), int(cy + 0.4 * s)),
            (max(1, int(0.08 * s)),) * 2,
            0,
            0,
            180,
            255,
            t,
        )
    elif kind == 3:  # recycling-like ring
        t = max(1, int(0.08 * s))
        cv2.circle(m, (int(cx), int(cy)), max(2, int(0.38 * s)), 255, t)
        for a in (0.3, 2.4, 4.5):
            p = c + 0.38 * s * np.array([math.cos(a), math.sin(a)])
            tri = p + 0.16 * s * np.array([[0, -1], [0.9, 0.5], [-0.9, 0.5]])
            cv2.fillPoly(m, [fp(tri)], 255, _AA, _SH)
    else:  # logo blob: filled circle / square / triangle
        sh = int(rng.integers(3))
        if sh == 0:
            cv2.circle(m, (int(cx), int(cy)), max(2, int(0.4 * s)), 255, -1)
        elif sh == 1:
            cv2.rectangle(
                m,
                (int(cx - 0.4 * s), int(cy - 0.3 * s)),
                (int(cx + 0.4 * s), int(cy + 0.3 * s)),
                255,
                -1,
            )
        else:
            tri = c + 0.45 * s * np.array([[0, -1], [0.9, 0.6], [-0.9, 0.6]])
            cv2.fillPoly(m, [fp(tri)], 255, _AA, _SH)


def print_marks(face: Face, rng: Rng) -> None:
    """Printed text, arrows and pictograms in semi-transparent ink."""
    fw, fh = face.w, face.h
    ink = _ink_colour(rng)
    for _ in range(int(rng.integers(1, 3))):
        m = np.zeros((fh, fw), np.uint8)
        if rng.random() < 0.5:
            text = _WORDS[int(rng.integers(len(_WORDS)))]
            font = _FONTS[int(rng.integers(len(_FONTS)))]
            th = int(rng.integers(1, 3))
            (tw, _), _b = cv2.getTextSize(text, font, 1.0, th)
            fs = rng.uniform(0.3, 0.8) * fw / max(tw, 1)
            fs = min(fs, 0.25 * fh / 22)
            if fs * 22 < 4:
                continue
            (tw, tht), _b = cv2.getTextSize(text, font, fs, th)
            x = int(rng.uniform(0, max(1, fw - tw)))
            y = int(rng.uniform(tht, max(tht + 1, fh)))
            cv2.putText(m, text, (x, y), font, fs, 255, th, _AA)
        else:
            s = rng.uniform(0.15, 0.35) * min(fw, fh)
            if s < 6:
                continue
            cx, cy = rng.uniform(s / 2, fw - s / 2), rng.uniform(s / 2, fh - s / 2)
            kind = pick(rng, [0.3, 0.25, 0.1, 0.1, 0.25])
            _icon(m, rng, kind, cx, cy, s)
        blend_u8(face.tex, m, ink, rng.uniform(0.55, 0.95))


def marker(face: Face, rng: Rng) -> None:
    """Handwritten marker: script digits/letters or a scribbled stroke."""
    fw, fh = face.w, face.h
    m = np.zeros((fh, fw), np.uint8)
    t = int(rng.integers(1, 3)) if min(fw, fh) > 60 else 1
    if rng.random() < 0.55:
        chars = "0123456789ABCDEFKLMRSTX/-#"
        text = "".join(chars[i] for i in rng.integers(0, len(chars), int(rng.integers(2, 7))))
        font = cv2.FONT_HERSHEY_SCRIPT_SIMPLEX if rng.random() < 0.7 else cv2.FONT_ITALIC
        fs = rng.uniform(0.2, 0.5) * min(fw, fh) / 22
        x, y = int(rng.uniform(0, 0.6 * fw)), int(rng.uniform(0.25 * fh, fh))
        cv2.putText(m, text, (x, y), font, max(fs, 0.25), 255, t, _AA)
    else:
        n = int(rng.integers(4, 12))
        p = walk(
            rng,
            np.array([rng.uniform(0, fw), rng.uniform(0, fh)]),
            n,
            rng.uniform(0.03, 0.12) * min(fw, fh),
            rng.uniform(0.5, 2.5),
        )
        cv2.polylines(m, [fp(p)], False, 255, t, _AA, _SH)
    blend_u8(face.tex, m, _ink_colour(rng) * F32(0.6), rng.uniform(0.75, 1.0))


def hand_hole(face: Face, rng: Rng) -> None:
    """Clean-cut stadium-shaped hand hole (benign dark opening with smooth edges)."""
    fw, fh = face.w, face.h
    hw, hh = rng.uniform(0.12, 0.25) * fw, rng.uniform(0.06, 0.12) * fh
    if hh < 4:
        return
    cx, cy = fw * rng.uniform(0.4, 0.6), fh * rng.uniform(0.15, 0.35)
    r = hh / 2
    pts = np.array(
        [
            [cx + sx * (hw / 2 - r) + r * math.cos(a), cy + r * math.sin(a)]
            for sx, a0 in ((1, -np.pi / 2), (-1, np.pi / 2))
            for a in np.linspace(a0, a0 + np.pi, 8)
        ]
    )
    cv2.fillPoly(face.tex, [fp(pts)], col(face.base * rng.uniform(0.08, 0.3)), _AA, _SH)
    cv2.polylines(face.tex, [fp(pts + face.light)], True, col(face.base * 1.15), 1, _AA, _SH)


def strap(face: Face, rng: Rng) -> None:
    """Plastic strapping band crossing the face."""
    fw, fh = face.w, face.h
    w = max(2.0, rng.uniform(0.025, 0.05) * min(fw, fh))
    sc = [(230, 230, 230), (170, 90, 30), (30, 190, 230), (30, 30, 30), (60, 140, 40)]
    c = np.array(sc[int(rng.integers(len(sc)))], F32)
    if rng.random() < 0.5:
        x = rng.uniform(0.15, 0.85) * fw
        p = np.array([[x - w / 2, -1], [x + w / 2, -1], [x + w / 2, fh + 1], [x - w / 2, fh + 1]])
    else:
        y = rng.uniform(0.15, 0.85) * fh
        p = np.array([[-1, y - w / 2], [fw + 1, y - w / 2], [fw + 1, y + w / 2], [-1, y + w / 2]])
    cv2.fillPoly(face.tex, [fp(p)], col(c), _AA, _SH)
    cv2.polylines(face.tex, [fp(p)], True, col(c * 0.75), 1, _AA, _SH)


def smudge(face: Face, rng: Rng, strong: bool = False) -> None:
    """Dirt smudge / scuff / water stain: soft irregular dark patch (benign look-alike)."""
    fw, fh = face.w, face.h
    s = rng.uniform(0.06, 0.25) * min(fw, fh)
    if s < 3:
        return
    cx, cy = rng.uniform(0, fw), rng.uniform(0, fh)
    box = bbox(np.array([[cx - 2 * s, cy - 2 * s], [cx + 2 * s, cy + 2 * s]]), 0, fh, fw)
    if box is None:
        return
    x0, y0, x1, y1 = box
    m: np.ndarray = np.zeros((y1 - y0, x1 - x0), F32)
    kind = rng.random()
    if kind < 0.5:
        for _ in range(int(rng.integers(2, 7))):
            c = (cx - x0 + rng.normal(0, s * 0.5), cy - y0 + rng.normal(0, s * 0.5))
            ax = (max(1, int(s * rng.uniform(0.2, 0.7))), max(1, int(s * rng.uniform(0.1, 0.5))))
            cv2.ellipse(
                m,
                (int(c[0]), int(c[1])),
                ax,
                rng.uniform(0, 180),
                0,
                360,
                rng.uniform(0.4, 1.0),
                -1,
            )
    elif kind < 0.8:  # smear strokes
        p = walk(rng, np.array([cx - x0, cy - y0]), int(rng.integers(2, 5)), s, 0.6)
        cv2.polylines(m, [fp(p)], False, 1.0, max(1, int(s * rng.uniform(0.2, 0.5))), _AA, _SH)
    else:  # water stain ring
        ax = (max(2, int(s)), max(2, int(s * rng.uniform(0.6, 1.0))))
        cv2.ellipse(m, (int(cx - x0), int(cy - y0)), ax, rng.uniform(0, 180), 0, 360, 0.35, -1)
        cv2.ellipse(m, (int(cx - x0), int(cy - y0)), ax, 0, 0, 360, 1.0, max(1, int(s * 0.08)))
    sig = s * rng.uniform(0.05, 0.3)
    if sig > 0.4:
        m = soft(m, sig)
    dark = face.base * F32(rng.uniform(0.1, 0.5)) if strong else face.base * F32(0.45)
    if rng.random() < 0.3:
        dark = np.full(3, rng.uniform(15, 70), F32)
    blend(face.tex, x0, y0, m, dark, rng.uniform(0.5, 0.95) if strong else rng.uniform(0.15, 0.5))


def soft_light(face: Face, rng: Rng) -> None:
    """Specular highlight or soft shadow band over the face."""
    fw, fh = face.w, face.h
    m: np.ndarray = np.zeros((max(2, fh // 4), max(2, fw // 4)), F32)
    if rng.random() < 0.5:
        c = (int(rng.uniform(0, m.shape[1])), int(rng.uniform(0, m.shape[0])))
        ax = (
            max(1, int(rng.uniform(0.1, 0.4) * m.shape[1])),
            max(1, int(rng.uniform(0.1, 0.4) * m.shape[0])),
        )
        cv2.ellipse(m, c, ax, rng.uniform(0, 180), 0, 360, 1.0, -1)
        colour, op = np.full(3, 255, F32), rng.uniform(0.08, 0.35)
    else:
        p = rng.uniform(0, 1, (2, 2)) * [m.shape[1], m.shape[0]]
        d = p[1] - p[0] + 1e-3
        n = np.array([-d[1], d[0]]) * 4
        quad = np.array([p[0] - d * 4, p[0] + d * 4, p[0] + d * 4 + n, p[0] - d * 4 + n])
        cv2.fillPoly(m, [fp(quad)], 1.0, _AA, _SH)
        colour, op = np.zeros(3, F32), rng.uniform(0.15, 0.5)
    m = cv2.GaussianBlur(m, (0, 0), rng.uniform(0.5, 3.0))
    m = cv2.resize(m, (fw, fh), interpolation=cv2.INTER_LINEAR)
    blend(face.tex, 0, 0, m, colour, op)


# --------------------------------------------------------------------------- damage


def _fibre(base: np.ndarray, rng: Rng) -> tuple[float, float, float]:
    """Colour of exposed paper fibres: lighter and less saturated than the board."""
    c = base * F32(rng.uniform(1.05, 1.3)) + F32(rng.uniform(10, 45))
    return col(np.clip(c * 0.6 + np.mean(c) * 0.4, 0, 250))


def _hairs(tex: np.ndarray, rng: Rng, pts: np.ndarray, colour, n: int) -> None:
    for i in rng.integers(0, len(pts), size=n):
        a = rng.uniform(0, 2 * np.pi)
        q = pts[i] + rng.uniform(1, 3.5) * np.array([math.cos(a), math.sin(a)])
        cv2.line(tex, tuple(fp(pts[i])), tuple(fp(q)), colour, 1, _AA, _SH)


def _interior(face: Face, rng: Rng, pts: np.ndarray, depth_dark: float) -> None:
    """Fill polygon with a dark corrugated interior (flute lines, depth shading) or contents."""
    box = bbox(pts, 1, face.h, face.w)
    if box is None:
        return
    x0, y0, x1, y1 = box
    m = poly_mask(pts, box).astype(bool)
    xx, yy = grid(x0, y0, x1, y1)
    lx, ly = face.light
    c = pts.mean(0)
    span = F32(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1.0))
    g = ((xx - F32(c[0])) * F32(lx) + (yy - F32(c[1])) * F32(ly)) / span
    u = rng.random()
    if u < 0.75:  # corrugated flutes
        a = rng.uniform(0, np.pi)
        per = rng.uniform(2.5, 6.0)
        t = (xx * F32(math.cos(a)) + yy * F32(math.sin(a))) * F32(2 * np.pi / per)
        amp = F32(rng.uniform(0.15, 0.45))
        val = F32(depth_dark) * (F32(1.0) + amp * np.sin(t) + F32(0.8) * g)
        colour = face.base * F32(rng.uniform(0.85, 1.05))
    elif u < 0.9:  # contents: bubble wrap / packing paper / plastic
        val = F32(rng.uniform(0.5, 0.9)) * (F32(1.0) + F32(0.5) * g)
        colour = np.clip(rng.uniform(120, 240, 3) * rng.uniform(0.6, 1.0), 0, 255).astype(F32)
    else:  # dark void
        val = F32(rng.uniform(0.05, 0.25)) * (F32(1.0) + F32(0.6) * g)
        colour = face.base
    val = val * (F32(1.0) + F32(0.12) * noise(rng, "fine", y1 - y0, x1 - x0))
    # the torn walls shade the opening: darkest in a gap just inside the rim, deepest on the
    # side facing the light (its wall stands between the light and the interior)
    dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    gap = np.exp(-dist / F32(max(1.0, 0.12 * float(span)))) * F32(1.0 + 0.5 * rng.random())
    gap *= np.clip(F32(0.6) + F32(1.2) * g, 0.2, 1.4)
    val = val * np.clip(F32(1.0) - F32(0.6) * gap, 0.15, 1.0)
    put(face.tex[y0:y1, x0:x1], cmul(np.clip(val, 0.0, 1.6), colour), m)


def tear(face: Face, rng: Rng, kid: int, cx: float, cy: float, s: float) -> None:
    """Ragged tear: opening with corrugated interior, fibrous rim and maybe a folded flap."""
    base, lt = face.base, face.light
    ang = rng.uniform(0, np.pi)
    flap = None
    if rng.random() < 0.45:
        hole = jagged(
            rng,
            cx,
            cy,
            s * rng.uniform(0.9, 1.3),
            s * rng.uniform(0.15, 0.5),
            ang,
            int(rng.integers(18, 34)),
            rng.uniform(0.15, 0.35),
            0.3,
        )
    else:
        u = np.array([math.cos(ang), math.sin(ang)])
        nrm = np.array([-u[1], u[0]])
        half = s * rng.uniform(0.6, 1.0)
        a, b = np.array([cx, cy]) - u * half, np.array([cx, cy]) + u * half
        t = np.linspace(0, 1, int(rng.integers(8, 14)))[:, None]
        depth = s * rng.uniform(0.6, 1.4) * np.sin(np.pi * t) ** rng.uniform(0.4, 1.0)
        curve = a + (b - a) * t - nrm * depth * rng.uniform(0.75, 1.25, t.shape)
        curve[1:-1] += rng.uniform(-0.08, 0.08, (len(t) - 2, 2)) * s
        hole = curve
        if rng.random() < 0.75:
            k = rng.uniform(0.3, 1.0)
            proj = ((curve - a) @ nrm)[:, None]
            flap = curve - (1 + k) * proj * nrm
    _interior(face, rng, hole, rng.uniform(0.2, 0.55))
    dark = col(base * rng.uniform(0.1, 0.3))
    th = 2 if s > 9 else 1
    cv2.polylines(face.tex, [fp(hole - lt * 0.8)], True, dark, th, _AA, _SH)
    fib = _fibre(base, rng)
    if rng.random() < 0.8:
        cv2.polylines(face.tex, [fp(hole)], True, fib, 1, _AA, _SH)
        _hairs(face.tex, rng, hole, fib, len(hole) // 2)
    cv2.fillPoly(face.label, [fp(hole)], kid, _AA, _SH)
    cv2.polylines(face.label, [fp(hole)], True, kid, 2, _AA, _SH)
    if flap is not None:
        sh = flap - lt * rng.uniform(1.5, 4.0)
        cv2.fillPoly(face.tex, [fp(sh)], col(base * 0.55), _AA, _SH)
        cv2.fillPoly(face.tex, [fp(flap)], col(base * rng.uniform(0.7, 1.2)), _AA, _SH)
        cv2.polylines(face.tex, [fp(flap)], False, fib, 1, _AA, _SH)
        cv2.fillPoly(face.label, [fp(flap)], kid, _AA, _SH)
        cv2.fillPoly(face.label, [fp(sh)], kid, _AA, _SH)


def _crease(
    tex: np.ndarray, rng: Rng, pts: np.ndarray, base: np.ndarray, lt: np.ndarray, t: int
) -> None:
    """Crease line: a dark fold with a thinner highlight on the side facing the light."""
    o = lt * rng.uniform(0.6, 1.3)
    hi = np.minimum(base * rng.uniform(1.05, 1.3) + rng.uniform(0, 20), 250)
    cv2.polylines(tex, [fp(pts + o)], False, col(hi), 1, _AA, _SH)
    cv2.polylines(tex, [fp(pts)], False, col(base * rng.uniform(0.3, 0.65)), t, _AA, _SH)


def _facets(face: Face, rng: Rng, pts: np.ndarray, k: int, amp: float, dark: float) -> None:
    """Crumpled-surface shading inside a polygon: facets (nearest of ``k`` random seeds),
    each with its own brightness, so that facet borders read as creases."""
    sz = max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 2.0)
    box = bbox(pts, 1, face.h, face.w)
    if box is None:
        return
    x0, y0, x1, y1 = box
    m: np.ndarray = poly_mask(pts, box).astype(F32)
    m = cv2.GaussianBlur(m, (0, 0), max(0.5, sz * 0.03))
    lo, hi = pts.min(0), pts.max(0)
    seeds = rng.uniform(lo, hi, (k, 2))
    vals = 1.0 - dark + amp * rng.uniform(-1, 1, k)
    # Voronoi cells of the seeds, rasterised as convex polygons (cheap, exact borders)
    sub = cv2.Subdiv2D(
        (int(lo[0]) - 2, int(lo[1]) - 2, int(hi[0] - lo[0]) + 5, int(hi[1] - lo[1]) + 5)
    )
    sub.insert([(float(x), float(y)) for x, y in seeds])
    cells, _centres = sub.getVoronoiFacetList([])
    shade = np.full((y1 - y0, x1 - x0), 1.0 - dark, F32)
    for cell, v in zip(cells, vals, strict=False):
        cv2.fillConvexPoly(shade, fp(np.asarray(cell) - (x0, y0)), float(v), _AA, _SH)
    smooth = cv2.GaussianBlur(shade, (0, 0), 0.6)
    face.tex[y0:y1, x0:x1] *= g3(F32(1) + m * (smooth - F32(1)))


def _shade_region(face: Face, rng: Rng, pts: np.ndarray, dark: float, tilt: float) -> None:
    """Soft directional dark/light shading inside polygon (a dented surface)."""
    s = max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 2.0)
    box = bbox(pts, s * 0.15 + 1, face.h, face.w)
    if box is None:
        return
    x0, y0, x1, y1 = box
    m: np.ndarray = poly_mask(pts, box).astype(F32)
    m = soft(m, max(0.6, s * 0.06))
    xx, yy = grid(x0, y0, x1, y1)
    c = pts.mean(0)
    g = (xx - F32(c[0])) * F32(face.light[0]) + (yy - F32(c[1])) * F32(face.light[1])
    g *= F32(2.0 / s)
    fac = F32(1.0) + m * (F32(tilt) * g - F32(dark))
    face.tex[y0:y1, x0:x1] *= g3(np.clip(fac, 0.2, 1.6))


def dent(face: Face, rng: Rng, kid: int, cx: float, cy: float, s: float) -> None:
    """Dent / crumple: faceted dark-light shading with irregular creases."""
    ry = s * rng.uniform(0.3, 1.0)
    ang = rng.uniform(0, np.pi)
    region = jagged(rng, cx, cy, s, ry, ang, 16, rng.uniform(0.05, 0.2), 0.35)
    _shade_region(face, rng, region, rng.uniform(0.06, 0.2), sign(rng) * rng.uniform(0.35, 0.7))
    _facets(
        face, rng, region, int(rng.integers(3, 9)), rng.uniform(0.2, 0.4), rng.uniform(0.04, 0.18)
    )
    c = np.array([cx, cy])
    ca, sa = math.cos(ang), math.sin(ang)
    t = 2 if s > 30 and rng.random() < 0.5 else 1
    for _ in range(int(rng.integers(2, 7))):
        r0 = rng.uniform(0, 0.6, 2) * [s, ry] * np.where(rng.random(2) < 0.5, -1.0, 1.0)
        p0 = c + np.array([r0[0] * ca - r0[1] * sa, r0[0] * sa + r0[1] * ca])
        p = walk(rng, p0, int(rng.integers(2, 6)), s * rng.uniform(0.25, 0.6), 1.2)
        rel = p - c
        lx = (rel @ [ca, sa]) / s
        ly = (rel @ [-sa, ca]) / ry
        k = np.maximum(np.hypot(lx, ly) / 0.9, 1.0)[:, None]
        p = c + rel / k
        _crease(face.tex, rng, p, face.base, face.light, t)
        cv2.polylines(face.label, [fp(p)], False, kid, t + 2, _AA, _SH)
    cv2.fillPoly(face.label, [fp(region)], kid, _AA, _SH)


def crushed_corner(face: Face, rng: Rng, kid: int, corner: int, s: float, cut: bool) -> None:
    """Crushed corner: corner pushed in (optionally cut from the silhouette), faceted and
    darkened, with creases radiating from the crumpled edge."""
    w, h = face.w, face.h
    sx = 1.0 if corner in (0, 3) else -1.0
    sy = 1.0 if corner in (0, 1) else -1.0
    o = np.array([0.0 if sx > 0 else w, 0.0 if sy > 0 else h])

    def tf(p: np.ndarray) -> np.ndarray:
        return o + p * [sx, sy]

    a, b = s * rng.uniform(0.6, 1.4), s * rng.uniform(0.6, 1.4)
    n = int(rng.integers(6, 11))
    t = np.linspace(0, 1, n)[:, None]
    push = s * rng.uniform(0.05, 0.45) * np.sin(np.pi * t)
    curve = np.hstack([a * (1 - t), b * t]) + push * 0.707
    curve[1:-1] += rng.uniform(-0.12, 0.12, (n - 2, 2)) * s
    curve = np.clip(curve, 0, None)
    inner = curve * rng.uniform(1.6, 2.3) + rng.uniform(-0.12, 0.12, curve.shape) * s
    band = np.vstack([curve, inner[::-1]])
    region = band if cut else np.vstack([[[0.0, 0.0]], inner[::-1]])
    _shade_region(face, rng, tf(region), rng.uniform(0.15, 0.35), sign(rng) * rng.uniform(0.2, 0.4))
    _facets(
        face,
        rng,
        tf(region),
        int(rng.integers(3, 8)),
        rng.uniform(0.18, 0.38),
        rng.uniform(0.04, 0.18),
    )
    for _ in range(int(rng.integers(3, 7))):
        i = int(rng.integers(n))
        p0 = curve[i] if cut else curve[i] * rng.uniform(0, 1)
        tgt = inner[int(np.clip(i + rng.integers(-2, 3), 0, n - 1))]
        p = ragged(rng, p0, p0 + (tgt - p0) * rng.uniform(0.6, 1.0), 3, s * 0.1)
        _crease(face.tex, rng, tf(p), face.base, face.light, 1)
    if cut:
        th = 2 if s > 12 else 1
        cv2.polylines(
            face.tex, [fp(tf(curve))], False, col(face.base * rng.uniform(0.25, 0.55)), th, _AA, _SH
        )
        if rng.random() < 0.6:
            cv2.polylines(
                face.tex, [fp(tf(curve + th))], False, _fibre(face.base, rng), 1, _AA, _SH
            )
        ext = np.vstack([[[-2.0, -2.0]], [[a + 2, -2.0]], curve, [[-2.0, b + 2]]])
        cv2.fillPoly(face.alpha, [fp(tf(ext))], 0.0, _AA, _SH)
        # the missing corner is damage too: what shows through it (floor, belt) is where the
        # silhouette changed, so it is labelled (see scenes._draw_faces)
        cv2.fillPoly(face.label, [fp(tf(ext))], kid, _AA, _SH)
        face.cut = True
    cv2.fillPoly(face.label, [fp(tf(region))], kid, _AA, _SH)


def puncture(face: Face, rng: Rng, kid: int, cx: float, cy: float, r: float) -> None:
    """Puncture: small hole with dark interior, pushed-in petals, fibre rim and crush ring."""
    base, lt = face.base, face.light
    ang = rng.uniform(0, np.pi)
    hole = jagged(
        rng,
        cx,
        cy,
        r,
        r * rng.uniform(0.55, 1.0),
        ang,
        int(rng.integers(10, 20)),
        rng.uniform(0.2, 0.45),
        0.2,
    )
    ring = jagged(
        rng, cx, cy, r * rng.uniform(1.4, 2.0), r * rng.uniform(1.3, 1.9), ang, 14, 0.15, 0.2
    )
    _shade_region(face, rng, ring, rng.uniform(0.05, 0.3), rng.uniform(-0.3, 0.3))
    box = bbox(hole, 1, face.h, face.w)
    if box is not None:
        x0, y0, x1, y1 = box
        m = poly_mask(hole, box).astype(bool)
        xx, yy = grid(x0, y0, x1, y1)
        d = np.hypot(xx - F32(cx), yy - F32(cy)) / F32(r)
        v = F32(rng.uniform(0.06, 0.35)) * (F32(0.6) + F32(0.5) * np.minimum(d, 1.0))
        tint = base if rng.random() < 0.8 else rng.uniform(60, 200, 3).astype(F32)
        put(face.tex[y0:y1, x0:x1], cmul(v, tint), m)
    c = np.array([cx, cy])
    fib = _fibre(base, rng)
    for _ in range(int(rng.integers(2, 6))):
        i = int(rng.integers(len(hole)))
        tri = np.array(
            [
                hole[i - 1],
                hole[i] + (c - hole[i]) * rng.uniform(0.3, 0.8),
                hole[(i + 1) % len(hole)],
            ]
        )
        cv2.fillPoly(face.tex, [fp(tri)], col(base * rng.uniform(0.45, 1.1)), _AA, _SH)
        cv2.polylines(face.tex, [fp(tri)], False, fib, 1, _AA, _SH)
    if rng.random() < 0.7:
        cv2.polylines(face.tex, [fp(hole)], True, fib, 1, _AA, _SH)
    for _ in range(int(rng.integers(0, 4))):
        p0 = ring[int(rng.integers(len(ring)))]
        p = ragged(rng, p0, c + (p0 - c) * rng.uniform(1.3, 1.8), 3, r * 0.15)
        _crease(face.tex, rng, p, base, lt, 1)
        cv2.polylines(face.label, [fp(p)], False, kid, 3, _AA, _SH)
    cv2.fillPoly(face.label, [fp(ring)], kid, _AA, _SH)


def torn_label(face: Face, rng: Rng, kid: int, cx: float, cy: float, s: float) -> None:
    """Label partly ripped off: ragged edge, paper residue, exposed lighter fibres."""
    near = [lb for lb in face.labels if lb[0] <= cx <= lb[2] and lb[1] <= cy <= lb[3]]
    if near:
        x0, y0, x1, y1, lc = near[0]
    else:
        x0, y0, x1, y1 = shipping_label(face, rng, cx, cy, s * rng.uniform(1.6, 2.6))
        lc = face.labels[-1][4]
    lw, lh = x1 - x0, y1 - y0
    if lw < 4 or lh < 4:
        return
    per = 2 * (lw + lh)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
    cum = np.array([0, lw, lw + lh, 2 * lw + lh, per], float)

    def at(t: float) -> np.ndarray:
        t %= per
        i = int(np.searchsorted(cum, t, side="right") - 1)
        d = corners[(i + 1) % 4] - corners[i]
        return corners[i] + d * (t - cum[i]) / (np.hypot(*d) + 1e-9)

    # rip off around one corner, so that the exposed board is a real patch, never a sliver
    # along one straight edge
    c = int(rng.integers(4))
    sides = (lw, lh, lw, lh)
    t1 = cum[c] - rng.uniform(0.35, 0.9) * sides[c - 1] + per
    t2 = cum[c] + rng.uniform(0.35, 0.9) * sides[c] + per
    inner = [corners[i % 4] for i in range(8) if t1 < cum[i % 4] + per * (i // 4) < t2]
    edge = np.array([at(t1), *inner, at(t2)])
    line = ragged(rng, edge[-1], edge[0], int(rng.integers(6, 14)), 0.07 * min(lw, lh) + 1)
    region = np.vstack([edge, line[1:-1]])
    box = bbox(region, 1, face.h, face.w)
    if box is not None:
        bx0, by0, bx1, by1 = box
        m = poly_mask(region, box).astype(bool)
        hh, ww = by1 - by0, bx1 - bx0
        patch = np.clip(
            (noise(rng, "mid", hh, ww, rng.uniform(0.7, 2.0)) + F32(rng.uniform(-1.0, 0.3)))
            * F32(2.0),
            0,
            1,
        )
        paper = np.asarray(lc, F32) * F32(rng.uniform(0.75, 0.95))
        board = np.clip(face.base * F32(rng.uniform(0.95, 1.2)) + F32(rng.uniform(0, 25)), 0, 250)
        grain = g3(F32(1.0) + F32(0.08) * noise(rng, "grain", hh, ww))
        new = (cmul(patch, paper - board) + cmul(np.ones_like(patch), board)) * grain
        put(face.tex[by0:by1, bx0:bx1], new, m)
    fib = col(np.minimum(np.asarray(lc) * 1.02 + 5, 255))
    cv2.polylines(face.tex, [fp(line + face.light * 0.8)], False, col(face.base * 0.5), 1, _AA, _SH)
    cv2.polylines(face.tex, [fp(line)], False, fib, int(rng.integers(1, 3)), _AA, _SH)
    _hairs(face.tex, rng, line, fib, len(line))
    cv2.fillPoly(face.label, [fp(region)], kid, _AA, _SH)
    cv2.polylines(face.label, [fp(line)], False, kid, 3, _AA, _SH)
    if rng.random() < 0.8:  # peeled-back curl of the label, lifted off the board
        mid = line[len(line) // 2]
        ctr = region.mean(0)
        curl = np.vstack([line[1:-1], mid + (ctr - mid) * rng.uniform(0.3, 0.8)])
        shadow = curl - face.light * rng.uniform(1.5, 3.5)
        cv2.fillPoly(face.tex, [fp(shadow)], col(face.base * 0.45), _AA, _SH)
        cv2.fillPoly(face.label, [fp(shadow)], kid, _AA, _SH)
        cv2.fillPoly(face.tex, [fp(curl)], col(np.asarray(lc) * rng.uniform(0.6, 0.9)), _AA, _SH)
        cv2.polylines(face.tex, [fp(curl)], True, fib, 1, _AA, _SH)
        cv2.fillPoly(face.label, [fp(curl)], kid, _AA, _SH)


def torn_tape(face: Face, rng: Rng, kid: int, cx: float, cy: float, s: float) -> None:
    """Tape ripped and curled up: exposed torn board fibres and a lifted tape flap."""
    if face.tapes:
        p0, p1, tw, tcol, clear = face.tapes[int(rng.integers(len(face.tapes)))]
    else:
        a = rng.uniform(0, np.pi)
        d = np.array([math.cos(a), math.sin(a)]) * (face.w + face.h)
        tape(
            face,
            rng,
            np.array([cx, cy]) - d,
            np.array([cx, cy]) + d,
            max(6.0, s * rng.uniform(0.5, 0.9)),
            pick(rng, [0.4, 0.4, 0.1, 0.1]),
        )
        p0, p1, tw, tcol, clear = face.tapes[-1]
    d = p1 - p0
    ln = np.hypot(*d) + 1e-9
    u, n = d / ln, np.array([-d[1], d[0]]) / ln
    tc = float(np.clip((np.array([cx, cy]) - p0) @ u, 0, ln))
    length = s * rng.uniform(0.8, 2.2)
    hw = tw / 2
    end0 = ragged(rng, p0 + u * tc + n * hw, p0 + u * tc - n * hw, 5, tw * 0.15)
    end1 = ragged(
        rng, p0 + u * (tc + length) - n * hw, p0 + u * (tc + length) + n * hw, 5, tw * 0.15
    )
    exposed = np.vstack([end0, end1])
    box = bbox(exposed, 1, face.h, face.w)
    if box is not None:
        x0, y0, x1, y1 = box
        m = poly_mask(exposed, box).astype(bool)
        hh, ww = y1 - y0, x1 - x0
        fib = np.clip(face.base * F32(rng.uniform(1.1, 1.35)) + F32(rng.uniform(15, 45)), 0, 250)
        mix = np.clip(noise(rng, "mid", hh, ww) * 0.8 + rng.uniform(0.0, 0.7), 0, 1)
        g = F32(1.0) + F32(0.12) * noise(rng, "grain", hh, ww)
        new = (cmul(mix.astype(F32), fib - face.base) + cmul(np.ones_like(g), face.base)) * g3(g)
        put(face.tex[y0:y1, x0:x1], new, m)
    fcol = _fibre(face.base, rng)
    cv2.polylines(face.tex, [fp(end0)], False, fcol, 1, _AA, _SH)
    cv2.polylines(face.tex, [fp(end1)], False, fcol, 1, _AA, _SH)
    cv2.fillPoly(face.label, [fp(exposed)], kid, _AA, _SH)
    # curled flap hinged at one torn end
    hinge = end1 if rng.random() < 0.5 else end0[::-1]
    sgn = 1.0 if hinge is end1 else -1.0
    rot = rng.uniform(-0.9, 0.9)
    cu = (
        np.array(
            [
                u[0] * math.cos(rot) - u[1] * math.sin(rot),
                u[0] * math.sin(rot) + u[1] * math.cos(rot),
            ]
        )
        * sgn
        * -1.0
    )
    flen = s * rng.uniform(0.4, 1.1)
    taper = rng.uniform(0.5, 1.0)
    mid = hinge.mean(0)
    tip = mid + cu * flen
    flap = np.vstack([hinge, tip + (hinge[-1] - mid) * taper, tip + (hinge[0] - mid) * taper])
    cv2.fillPoly(
        face.tex, [fp(flap - face.light * rng.uniform(1.5, 3.5))], col(face.base * 0.5), _AA, _SH
    )
    under = np.asarray(tcol, F32) * F32(rng.uniform(0.55, 0.85))
    if clear:
        under = face.base * F32(rng.uniform(0.7, 1.1)) + F32(25)
    cv2.fillPoly(face.tex, [fp(flap)], col(np.clip(under, 0, 250)), _AA, _SH)
    cv2.polylines(
        face.tex, [fp(flap[-2:])], False, col(np.minimum(under * 1.4 + 30, 255)), 1, _AA, _SH
    )
    cv2.fillPoly(face.label, [fp(flap)], kid, _AA, _SH)


# ----------------------------------------------------------------------- backgrounds


def _rails(img: np.ndarray, rng: Rng, y0: int, y1: int) -> None:
    """Metal side rails along x just outside rows ``[y0, y1)``, with bolts and cast shadow."""
    h, w = img.shape[:2]
    rw = max(3, int(rng.uniform(0.03, 0.08) * h))
    choices = ([175, 175, 175], [130, 135, 140], [30, 170, 220], [160, 100, 40], [60, 120, 60])
    c = np.array(choices[pick(rng, [0.4, 0.25, 0.15, 0.1, 0.1])], F32)
    prof = 0.55 + 0.6 * np.sin(np.linspace(0.15, np.pi - 0.15, rw)) ** 0.7
    prof[int(rw * rng.uniform(0.2, 0.5))] *= 1.35
    bolt = int(rng.uniform(30, 90))
    for ya in (y0 - rw, y1):
        a, b = max(ya, 0), min(ya + rw, h)
        if b <= a:
            continue
        p = prof[a - ya : b - ya].astype(F32)
        img[a:b] = cmul((F32(1) + F32(0.04) * noise(rng, "grain", b - a, w)) * p[:, None], c)
        if rng.random() < 0.7:
            for x in range(int(rng.uniform(0, bolt)), w, bolt):
                cv2.circle(img, (x, ya + rw // 2), max(1, rw // 5), col(c * 0.35), -1)
    for ys, sgn in ((y0, 1), (y1 - 1, -1)):
        dep = max(2, int(rw * rng.uniform(0.3, 1.0)))
        for i in range(dep):
            yy = ys + sgn * i
            if 0 <= yy < h:
                img[yy] *= F32(1.0 - 0.45 * (1 - i / dep))


def belt_parts(
    rng: Rng, h: int, w: int, period: int | None
) -> tuple[np.ndarray, int, int, np.ndarray | None]:
    """Conveyor scene along x: static part plus an x-periodic moving belt strip.

    Args:
        rng: Random generator.
        h: Height.
        w: Width.
        period: Period in pixels of the belt texture along x, or None for a still image.

    Returns:
        ``(static, y0, y1, tile)``: static float32 ``(h, w, 3)`` image (floor, rails, rollers,
        belt), belt rows ``[y0, y1)`` (clipped), and ``tile`` float32 ``(y1 - y0, period + w,
        3)`` whose column ``k`` shows belt position ``k mod period``, or None for a roller belt
        or when ``period`` is None.
    """
    bw = rng.uniform(0.55, 1.4) * h
    yc = h / 2 + rng.uniform(-0.15, 0.15) * h
    y0, y1 = max(int(yc - bw / 2), 0), min(int(yc + bw / 2), h)
    bh = y1 - y0
    if y0 > 0 or y1 < h:
        static = concrete(rng, h, w) if rng.random() < 0.4 else plain(rng, h, w)
    else:
        static = np.zeros((h, w, 3), F32)
    tile = None
    if rng.random() < 0.7:  # rubber / PVC belt
        choices = (
            [45, 45, 45],
            [28, 28, 30],
            [60, 120, 45],
            [140, 95, 45],
            [185, 185, 180],
            [100, 130, 150],
        )
        c = np.array(choices[pick(rng, [0.3, 0.2, 0.15, 0.12, 0.13, 0.1])], F32)
        c = c * F32(rng.uniform(0.8, 1.2))
        pw = w if period is None else period
        fade = 0 if period is None else max(8, period // 8)
        raw: np.ndarray = noise(rng, "fine", bh, pw + fade) * F32(rng.uniform(0.03, 0.08))
        raw = raw + noise(rng, "grain", bh, pw + fade, rng.uniform(1, 3)) * F32(
            rng.uniform(0.03, 0.12)
        )
        raw = raw + noise(rng, "blob", bh, pw + fade) * F32(rng.uniform(0.02, 0.1))
        lum = raw[:, :pw].copy()
        if fade:  # cross-fade the start into the continuation past the period: seamless wrap
            t = np.linspace(0, 1, fade, dtype=F32)[None, :]
            lum[:, :fade] = raw[:, :fade] * t + raw[:, pw:] * (F32(1) - t)
        xs = np.arange(pw)
        kind = rng.random()
        if kind < 0.35:  # cleats / ribs across the belt
            cp = pw / max(1, round(pw / rng.uniform(8, 60)))
            ph = (xs % cp) / cp
            lum += (
                F32(rng.uniform(0.1, 0.35))
                * ((ph < 0.12).astype(F32) - ((ph >= 0.12) & (ph < 0.2)).astype(F32) * F32(0.5))[
                    None, :
                ]
            )
        elif kind < 0.55:  # diamond / chevron texture
            cp = pw / max(1, round(pw / rng.uniform(6, 16)))
            xf, yf = grid(0, 0, pw, bh)
            k = F32(1.0 / cp)
            cell = (np.floor((xf + yf) * k) + np.floor((xf - yf) * k)) % F32(2.0)
            lum += (cell - F32(0.5)) * F32(rng.uniform(0.1, 0.3))
        lum += F32(1.0)
        band = cmul(lum, c)
        if period is None:
            static[y0:y1] = band
        else:
            reps = -(-(period + w) // period)
            tile = np.ascontiguousarray(np.tile(band, (1, reps, 1))[:, : period + w])
            static[y0:y1] = tile[:, :w]
    else:  # roller conveyor (static)
        per = rng.uniform(0.04, 0.12) * max(h, w)
        dfrac = rng.uniform(0.7, 0.95)
        ph = (np.arange(w) % per) / per
        inside = ph < dfrac
        s = np.where(inside, 0.45 + 0.75 * np.sin(np.pi * np.clip(ph / dfrac, 0, 1)) ** 0.6, 0.15)
        s += inside * 0.4 * np.exp(-(((ph / dfrac) - rng.uniform(0.3, 0.45)) ** 2) / 0.004)
        c = np.array([170, 170, 168], F32) * F32(rng.uniform(0.6, 1.2))
        if rng.random() < 0.25:
            c = np.array([40, 40, 40], F32)
        lum = s.astype(F32)[None, :] * (F32(1) + F32(0.05) * noise(rng, "fine", bh, w))
        static[y0:y1] = cmul(lum, c)
    _rails(static, rng, y0, y1)
    return static, y0, y1, tile


def belt(rng: Rng, h: int, w: int) -> np.ndarray:
    """Conveyor belt (rubber or rollers) with side rails; float32 ``(h, w, 3)``."""
    return belt_parts(rng, h, w, None)[0]


def concrete(rng: Rng, h: int, w: int) -> np.ndarray:
    """Concrete floor with mottling, stains, cracks, joints and painted safety lines."""
    g = rng.uniform(80, 200)
    c = (g + rng.uniform(-10, 10, 3)).astype(F32)
    lum = noise(rng, "fine", h, w) * F32(rng.uniform(0.02, 0.08))
    lum += noise(rng, "mid", h, w, rng.uniform(1.0, 2.0)) * F32(rng.uniform(0.02, 0.07))
    lum += noise(rng, "blob", h, w) * F32(rng.uniform(0.04, 0.14))
    lum += F32(1.0)
    ns = int(rng.integers(0, 5))
    if ns:
        sm: np.ndarray = np.zeros((h // 4 + 1, w // 4 + 1), F32)
        for _ in range(ns):
            cv2.ellipse(
                sm,
                (int(rng.uniform(0, w / 4)), int(rng.uniform(0, h / 4))),
                (int(rng.uniform(2, w / 10)) + 1, int(rng.uniform(2, h / 10)) + 1),
                rng.uniform(0, 180),
                0,
                360,
                rng.uniform(0.1, 0.45),
                -1,
            )
        sm = cv2.resize(cv2.GaussianBlur(sm, (0, 0), rng.uniform(1, 4)), (w, h))
        lum *= F32(1.0) - sm
    img = cmul(lum, c)
    for _ in range(int(rng.integers(0, 3))):
        p = walk(
            rng,
            np.array([rng.uniform(0, w), rng.uniform(0, h)]),
            int(rng.integers(5, 15)),
            rng.uniform(0.03, 0.1) * max(h, w),
            0.7,
        )
        cv2.polylines(img, [fp(p)], False, col(c * rng.uniform(0.35, 0.7)), 1, _AA, _SH)
    if rng.random() < 0.3:
        y = int(rng.uniform(0, h))
        cv2.line(img, (0, y), (w, y), col(c * 0.5), int(rng.integers(1, 3)))
    if rng.random() < 0.5:
        bw = max(3, int(rng.uniform(0.04, 0.15) * min(h, w)))
        y = int(rng.uniform(-bw / 2, h - bw / 2))
        a, b = max(y, 0), min(y + bw, h)
        if b > a:
            pc = ([20, 190, 230], [225, 225, 225], [60, 150, 40], [170, 90, 30], [40, 40, 190])
            pcol = np.array(pc[pick(rng, [0.45, 0.25, 0.1, 0.1, 0.1])], F32)
            band = np.repeat(row(pcol, w), b - a, axis=0)
            if rng.random() < 0.3:  # hazard stripes
                per = rng.uniform(10, 30)
                xx, yy = grid(0, a, w, b)
                put(band, np.full_like(band, 25.0), ((xx + yy) % per) < per / 2)
            wear = np.clip(F32(0.85) + F32(0.5) * noise(rng, "mid", b - a, w), 0, 1)
            wear = g3(wear * F32(rng.uniform(0.6, 0.95)))
            img[a:b] += (band * g3(lum[a:b]) - img[a:b]) * wear
    return img


def pallet(rng: Rng, h: int, w: int) -> np.ndarray:
    """Wooden pallet: planks along x with grain, knots, nails and dark gaps."""
    wc = ([120, 170, 205], [135, 150, 160], [65, 95, 130], [95, 135, 185], [150, 185, 215])
    c = np.array(wc[int(rng.integers(len(wc)))], F32)
    grain = noise(rng, "grain", h, w, rng.uniform(1, 2.5)) * F32(rng.uniform(0.05, 0.15))
    lum = grain + noise(rng, "fine", h, w) * F32(0.03) + F32(1.0)
    img = cmul(lum, c)
    gap_c = np.asarray(rng.uniform(10, 45, 3), F32)
    pw, gw = rng.uniform(0.12, 0.3) * h, rng.uniform(0.02, 0.1) * h
    y = -rng.uniform(0, pw + gw)
    nails = rng.uniform(0.05, 0.45) * w, rng.uniform(0.55, 0.95) * w
    while y < h:
        a, b = max(int(y), 0), min(int(y + pw), h)
        if b > a:
            img[a:b] *= F32(rng.uniform(0.8, 1.15))
            cv2.line(img, (0, a), (w, a), col(c * 0.6), 1)
            for nx in nails:
                for ny in (a + (b - a) * 0.3, a + (b - a) * 0.7):
                    cv2.circle(img, (int(nx), int(ny)), max(1, int(h * 0.008)), col(c * 0.3), -1)
            if rng.random() < 0.3:
                cv2.ellipse(
                    img,
                    (int(rng.uniform(0, w)), int((a + b) / 2)),
                    (max(2, int(pw * 0.25)), max(1, int(pw * 0.1))),
                    0,
                    0,
                    360,
                    col(c * 0.5),
                    -1,
                )
        g0, g1 = max(int(y + pw), 0), min(int(y + pw + gw), h)
        if g1 > g0:
            img[g0:g1] = row(gap_c, w)
        y += pw + gw
    return img


def shelf(rng: Rng, h: int, w: int) -> np.ndarray:
    """Racking: dark background, wire-mesh or board deck, coloured beams and uprights."""
    if rng.random() < 0.5:
        img = cmul(noise(rng, "blob", h, w) * F32(0.2) + F32(1), rng.uniform(20, 60, 3))
        per = int(rng.uniform(6, 20))
        mc = col(rng.uniform(120, 190) * np.ones(3))
        for x in range(int(rng.integers(per)), w, per):
            cv2.line(img, (x, 0), (x, h), mc, 1)
        for y in range(int(rng.integers(per)), h, per * int(rng.integers(1, 4))):
            cv2.line(img, (0, y), (w, y), mc, 1)
    else:
        img = plain(rng, h, w)
    bc = ([20, 100, 230], [150, 80, 20], [30, 170, 220], [110, 110, 110])
    for _ in range(int(rng.integers(1, 3))):
        c = np.array(bc[int(rng.integers(len(bc)))], F32)
        bh = max(4, int(rng.uniform(0.05, 0.12) * h))
        y = int(rng.uniform(-bh / 2, h - bh / 2))
        a, b = max(y, 0), min(y + bh, h)
        if b > a:
            p = np.linspace(1.2, 0.7, bh, dtype=F32)[a - y : b - y]
            img[a:b] = cmul(np.repeat(p[:, None], w, axis=1), c)
    if rng.random() < 0.6:
        c = np.array(bc[int(rng.integers(len(bc)))], F32)
        uw = max(4, int(rng.uniform(0.04, 0.1) * w))
        left = rng.random() < 0.5
        x = int(rng.uniform(-uw / 2, 0.2 * w) if left else rng.uniform(0.8 * w, w - uw / 2))
        a, b = max(x, 0), min(x + uw, w)
        if b > a:
            img[:, a:b] = c
            for yy in range(0, h, max(6, uw)):
                cv2.rectangle(
                    img,
                    (a + (b - a) // 3, yy),
                    (a + 2 * (b - a) // 3, yy + uw // 3),
                    col(c * 0.2),
                    -1,
                )
    return img


def plain(rng: Rng, h: int, w: int) -> np.ndarray:
    """Plain / painted / corrugated-metal / block wall with gradient."""
    wc = (
        [235, 235, 235],
        [180, 180, 180],
        [170, 200, 215],
        [215, 200, 170],
        [170, 205, 175],
        [90, 90, 95],
    )
    c = np.array(wc[int(rng.integers(len(wc)))], F32) * F32(rng.uniform(0.75, 1.05))
    lum = lowres(rng, h, w, 3, rng.uniform(0.05, 0.25))
    lum += noise(rng, "fine", h, w) * F32(rng.uniform(0.01, 0.04))
    lum += noise(rng, "blob", h, w) * F32(rng.uniform(0.01, 0.05))
    k = rng.random()
    if k < 0.2:  # corrugated metal
        per = rng.uniform(6, 20)
        lum *= F32(1) + F32(0.15) * np.sin(np.arange(w, dtype=F32) * F32(2 * np.pi / per))
    elif k < 0.35:  # block wall mortar lines
        bh = int(rng.uniform(12, 30))
        for y in range(int(rng.integers(bh)), h, bh):
            lum[y] *= F32(0.7)
            off = (y // bh) % 2 * bh
            lum[y : y + bh, off % (2 * bh) :: 2 * bh] *= F32(0.75)
    elif k < 0.5:  # panel seams
        per = int(rng.uniform(0.2, 0.5) * w) + 1
        lum[:, int(rng.integers(per)) :: per] *= F32(0.6)
    img = cmul(lum, c)
    if rng.random() < 0.25:  # painted lower band
        y = int(rng.uniform(0.5, 0.9) * h)
        img[y:] = cmul(np.ascontiguousarray(lum[y:]), rng.uniform(40, 140, 3))
    return img


def random_bg(rng: Rng, h: int, w: int) -> np.ndarray:
    """Random gradients, stripes, checkers and coloured blob noise (sometimes box-brown)."""
    c0 = rng.uniform(0, 255, 3).astype(F32)
    c1 = rng.uniform(0, 255, 3).astype(F32)
    if rng.random() < 0.25:
        c1 = box_colour(rng) * F32(rng.uniform(0.6, 1.2))
    a = rng.uniform(0, 2 * np.pi)
    xs = np.arange(w, dtype=F32)[None, :] / F32(max(h, w))
    ys = np.arange(h, dtype=F32)[:, None] / F32(max(h, w))
    t = xs * F32(math.cos(a)) + ys * F32(math.sin(a))
    k = rng.random()
    if k < 0.4:
        t = t - t.min()
        t = t / (t.max() + 1e-6)
    elif k < 0.65:
        t = (np.sin(t * F32(rng.uniform(10, 80))) > 0).astype(F32) * F32(rng.uniform(0.3, 1))
    elif k < 0.8:
        f = rng.uniform(4, 24)
        t = ((np.floor(xs * f) + np.floor(ys * f)) % 2).astype(F32)
    else:
        nz = noise(rng, "blob", h, w) if rng.random() < 0.5 else noise(rng, "mid", h, w, 3.0)
        t = np.clip(nz * F32(0.5) + F32(0.5), 0, 1)
    img = cmul(np.ascontiguousarray(t, dtype=F32), c1 - c0) + row(c0, w)
    amp = F32(rng.uniform(3, 20))
    img += g3(noise(rng, "fine", h, w) * amp)
    return img


_BACKGROUNDS = (belt, concrete, pallet, shelf, plain, random_bg)
_BG_P = (0.3, 0.2, 0.15, 0.1, 0.1, 0.15)
BACKGROUNDS = ("belt", "concrete", "pallet", "shelf", "wall", "random texture")
"""The background kinds, as a Scene names them (in the order of _BACKGROUNDS)."""


def background(rng: Rng, h: int, w: int) -> tuple[np.ndarray, str]:
    """Random warehouse background, randomly transposed, flipped and slightly rotated.

    Returns:
        float32 ``(h, w, 3)`` and the background's kind (one of BACKGROUNDS).
    """
    which = pick(rng, _BG_P)
    gen = _BACKGROUNDS[which]
    tr = rng.random() < 0.5
    rot = rng.uniform(-15, 15) if rng.random() < 0.3 else 0.0
    flip = int(rng.integers(4))
    gh, gw = (w, h) if tr else (h, w)
    m = int(0.5 * max(h, w) * abs(math.sin(math.radians(rot)))) + 2 if rot else 0
    img = gen(rng, gh + 2 * m, gw + 2 * m)
    if tr:
        img = cv2.transpose(img)
    if rot:
        r = cv2.getRotationMatrix2D(((w + 2 * m) / 2, (h + 2 * m) / 2), rot, 1.0)
        r[:, 2] -= m
        img = cv2.warpAffine(img, r, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if flip:
        img = cv2.flip(img, (0, 1, -1)[flip - 1])
    return np.ascontiguousarray(img, dtype=F32), BACKGROUNDS[which]


# ---------------------------------------------------------------------- photometric


@functools.lru_cache(maxsize=8)
def _radius2(h: int, w: int) -> np.ndarray:
    """Squared normalised distance from the image centre, float32 ``(h, w)``, read-only."""
    xs = np.linspace(-1, 1, w, dtype=F32)[None, :]
    ys = np.linspace(-1, 1, h, dtype=F32)[:, None]
    r2 = xs * xs + ys * ys
    r2.flags.writeable = False
    return r2


def lighting(rng: Rng, h: int, w: int) -> np.ndarray:
    """Multiplicative lighting field: gain, colour temperature, gradient and vignette.

    Returns:
        float32 ``(h, w, 3)``.
    """
    field_ = lowres(rng, h, w, int(rng.integers(2, 5)), rng.uniform(0.0, 0.3))
    if rng.random() < 0.4:
        field_ *= _radius2(h, w) * F32(-rng.uniform(0.05, 0.2)) + F32(1.0)
    temp = rng.uniform(-0.15, 0.15)
    gains = np.array([1 + temp, 1 + rng.uniform(-0.04, 0.04), 1 - temp]) * math.exp(
        rng.uniform(-0.6, 0.3)
    )
    return cmul(field_, gains)


def cast_shadow(img: np.ndarray, rng: Rng) -> None:
    """Soft large shadow (from an overhead structure or person) over part of the image."""
    h, w = img.shape[:2]
    sm = np.zeros((h // 8 + 2, w // 8 + 2), F32)
    p = rng.uniform(0, 1, (int(rng.integers(3, 6)), 2)) * [sm.shape[1], sm.shape[0]]
    if rng.random() < 0.5:
        p = np.vstack([p, [[0, 0] if rng.random() < 0.5 else [sm.shape[1], sm.shape[0]]]])
    cv2.fillPoly(sm, [fp(cv2.convexHull(p.astype(np.float32))[:, 0])], 1.0, _AA, _SH)
    sm = cv2.resize(cv2.GaussianBlur(sm, (0, 0), rng.uniform(0.3, 2.0)), (w, h))
    img *= g3(F32(1.0) - sm * F32(rng.uniform(0.2, 0.55)))


def add_noise(
    img: np.ndarray, rng: Rng, sigma: float, gain: float = 1.0, offset: float = 0.0
) -> np.ndarray:
    """``uint8(saturate(img * gain + offset + sigma * N(0, 1)))`` in one pass.

    Args:
        img: float32 ``(H, W, 3)``.
        rng: Random generator (picks the noise crop).
        sigma: Noise standard deviation (independent per channel and pixel).
        gain: Multiplier applied to ``img``.
        offset: Added after the gain.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    h, w = img.shape[:2]
    flat = img.reshape(h, 3 * w)
    if 3 * w <= _BANK_W and h <= _BANK_H:
        n = noise(rng, "fine", h, 3 * w)
    else:  # very wide frames: per-pixel (luminance) noise is good enough
        n = g3(np.ascontiguousarray(noise(rng, "fine", h, w))).reshape(h, 3 * w)
    out = cv2.addWeighted(flat, gain, n, sigma, offset, dtype=cv2.CV_8U)
    return out.reshape(h, w, 3)


def finish(img: np.ndarray, rng: Rng, jpeg: bool = True) -> np.ndarray:
    """Photometric pipeline: lighting, contrast, shadow, blur, noise, quantise, JPEG.

    Args:
        img: float32 ``(H, W, 3)``, modified in place.
        rng: Random generator.
        jpeg: Whether a JPEG round trip may be applied (with probability 0.8).

    Returns:
        uint8 ``(H, W, 3)`` BGR.
    """
    h, w = img.shape[:2]
    img *= lighting(rng, h, w)
    if rng.random() < 0.25:
        cast_shadow(img, rng)
    contrast = rng.uniform(0.75, 1.25)
    mean = float(img[::4, ::4].mean())
    u = rng.random()
    if u < 0.22:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.3))
    elif u < 0.35:
        ln = int(rng.integers(3, 10))
        k = np.zeros((ln, ln), F32)
        a = rng.uniform(0, np.pi)
        c0 = (ln - 1) / 2
        d = np.array([math.cos(a), math.sin(a)]) * c0
        cv2.line(
            k, (round(c0 - d[0]), round(c0 - d[1])), (round(c0 + d[0]), round(c0 + d[1])), 1.0, 1
        )
        img = cv2.filter2D(img, -1, k / k.sum())
    sigma = math.exp(rng.uniform(math.log(0.5), math.log(8.0)))
    out = add_noise(img, rng, sigma, contrast, (1.0 - contrast) * mean)
    if jpeg and rng.random() < 0.8:
        q = int(rng.integers(60, 96))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        dec = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if dec is not None:
            out = dec
    return out
