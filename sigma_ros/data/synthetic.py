"""Seeded synthetic RGB-thermal street scenes with per-pixel labels (pure numpy).

Each scene is a pinhole view down a street: sky, building facades with windows, road, sidewalks, road markings, cones,
cars and people, by day or by night. The modalities are rendered so that **neither one alone is enough**:

* people are hot in thermal, but at night they are not drawn into the RGB image at all (a dark pedestrian);
* road markings and cones are drawn into RGB only: in thermal they have the temperature of what lies behind them;
* everything else is visible in both (with different appearance: the sky is cold, sun-heated roads are warm, lit
  windows are bright at night, cars have warm tyres and engines).

So a model that fuses RGB and thermal can label all classes, an RGB-only model misses people at night, and a
thermal-only model cannot find markings or cones. Geometry follows a flat-ground pinhole camera, so object sizes and
facades converge correctly on the vanishing point. Sensor effects: RGB noise (stronger at night) and a slight blur;
thermal blur, noise, column fixed-pattern noise and a smooth gain field.

``make_scene(seed)`` is deterministic per seed; a 480x640 scene takes a few tens of milliseconds.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

__all__ = [
    "SYNTHETIC_CLASS_NAMES", "SYNTHETIC_PALETTE", "SYNTHETIC_CLASSES", "make_scene", "scene_seed",
    "write_synthetic_dataset", "SKY", "BUILDING", "ROAD", "SIDEWALK", "CAR", "PERSON", "MARKING", "CONE",
]

SKY, BUILDING, ROAD, SIDEWALK, CAR, PERSON, MARKING, CONE = range(8)
SYNTHETIC_CLASS_NAMES = ["sky", "building", "road", "sidewalk", "car", "person", "road marking", "cone"]
SYNTHETIC_PALETTE = np.array([
    [70, 130, 180],   # sky
    [70, 70, 70],     # building
    [128, 64, 128],   # road
    [244, 35, 232],   # sidewalk
    [0, 0, 142],      # car
    [220, 20, 60],    # person
    [255, 255, 255],  # road marking
    [255, 140, 0],    # cone
], dtype=np.uint8)

try:
    from sigma_ros.classes import ClassConfig

    # preprocessing "rgb": models trained on these scenes see RGB-order input (sigma_ros' own profile).
    SYNTHETIC_CLASSES = ClassConfig("synthetic", list(SYNTHETIC_CLASS_NAMES), SYNTHETIC_PALETTE.copy(),
                                    modality="thermal", preprocessing="rgb")
except ImportError:  # pragma: no cover - classes.py is part of the package
    SYNTHETIC_CLASSES = None


class _Canvas:
    """The three layers being painted, plus the camera. Painting with colour/temperature None leaves that layer
    untouched, which is how an object becomes invisible in one modality."""

    def __init__(self, h, w, rng, night):
        self.h, self.w, self.rng, self.night = h, w, rng, night
        self.label = np.zeros((h, w), np.uint8)
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.th = np.zeros((h, w), np.float32)
        # camera: horizon row, vanishing column, focal length (px), camera height above the ground (m)
        # Python floats throughout: numpy scalars would promote the float32 image math to float64.
        self.yh = float(h * rng.uniform(0.36, 0.46))
        self.xv = float(w * rng.uniform(0.4, 0.6))
        self.f = float(w * rng.uniform(0.7, 0.95))
        self.cam_h = float(rng.uniform(1.4, 2.6))

    def project(self, x_m, z_m, y_m=0.0):
        """Ground-relative point (lateral x, depth z, height y; metres) -> image (col, row)."""
        return self.xv + self.f * x_m / z_m, self.yh + self.f * (self.cam_h - y_m) / z_m

    def paint(self, y0, x0, mask, cls, color=None, temp=None):
        y0, x0 = int(y0), int(x0)
        mh, mw = mask.shape
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + mh, self.h), min(x0 + mw, self.w)
        if ya >= yb or xa >= xb:
            return
        m = mask[ya - y0:yb - y0, xa - x0:xb - x0]
        self.label[ya:yb, xa:xb][m] = cls
        if color is not None:
            self.rgb[ya:yb, xa:xb][m] = color
        if temp is not None:
            self.th[ya:yb, xa:xb][m] = temp


def _box_mask(h, w):
    return np.ones((max(int(h), 1), max(int(w), 1)), bool)


def _ellipse_mask(h, w):
    h, w = max(int(h), 1), max(int(w), 1)
    yy = (np.arange(h) + 0.5) / h * 2 - 1
    xx = (np.arange(w) + 0.5) / w * 2 - 1
    return yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0


def _background(c: _Canvas, street):
    h, w, night = c.h, c.w, c.night
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    dx = xx - c.xv
    xl, xr, z_end = street["facade_l"], street["facade_r"], street["z_end"]

    # sky: a vertical gradient (day: blue, lighter at the horizon; night: near black), cold in thermal
    t = np.clip(yy / max(c.yh, 1.0), 0, 1)
    if night:
        sky = np.array([8, 10, 22], np.float32) + t[..., None] * np.array([10, 10, 14], np.float32)
    else:
        sky = (np.array([70, 120, 200], np.float32) * (1 - t[..., None])
               + np.array([175, 200, 225], np.float32) * t[..., None]) * street["light"]
    c.rgb[:] = sky
    c.label[:] = SKY
    c.th[:] = (18.0 if night else 32.0) + 10.0 * t

    # ground (below the horizon, rows y0..h): lateral position x and depth z of every ground pixel
    y0 = min(int(np.floor(c.yh)) + 1, h)
    gy = yy[y0:]
    below = gy - c.yh
    z = c.f * c.cam_h / below
    x = dx * c.cam_h / below
    ground = (z < z_end) & (x > xl) & (x < xr)
    rc, rhalf = street["road_center"], street["road_half"]
    road = ground & (np.abs(x - rc) <= rhalf)
    side = ground & ~road
    xg, zg = x[ground], np.broadcast_to(z, ground.shape)[ground]
    is_road = road[ground]
    g_rgb = np.where(is_road[:, None], street["road_rgb"], street["side_rgb"]).astype(np.float32)
    if night:  # street lamps: pools of light on the ground
        boost = np.zeros(xg.shape, np.float32)
        for lx, lz in street["lamps"]:
            boost += np.exp(-((xg - lx) ** 2 + ((zg - lz) * 0.5) ** 2) / 18.0)
        g_rgb *= (1.0 + 3.0 * np.minimum(boost, 1.5))[:, None]
    # sun-warmed ground is a little warmer close to the camera (less grazing view); mild at night
    g_th = np.where(is_road, street["road_temp"], street["side_temp"]).astype(np.float32)
    g_th += (6.0 if not night else 2.0) * np.broadcast_to(gy / h, ground.shape)[ground]
    c.rgb[y0:][ground] = g_rgb
    c.th[y0:][ground] = g_th
    c.label[y0:][road] = ROAD
    c.label[y0:][side] = SIDEWALK

    # facades: vertical planes at lateral xl (left) and xr (right). In column x the facade spans rows
    # yh - (H_b - cam_h) * dx / X_b (roof) .. yh + cam_h * dx / X_b (foot), at depth z = f * X_b / dx.
    xv = int(np.clip(round(c.xv), 0, w))
    for side_x, cs in ((xl, slice(0, xv)), (xr, slice(xv, w))):
        d = dx[:, cs]
        with np.errstate(divide="ignore"):
            zc = c.f * side_x / d  # depth of the facade in each column (<= 0 or inf: not on this side)
        cols = (zc > 0) & (zc < z_end) & (np.abs(d) > 0.5)
        if not cols.any():
            continue
        idx = np.clip(np.searchsorted(street["block_edges"], zc) - 1, 0, len(street["block_heights"]) - 1)
        hb = street["block_heights"][idx]
        roof = c.yh - (hb - c.cam_h) * d / side_x
        foot = c.yh + c.cam_h * d / side_x
        fac = cols & (yy >= roof) & (yy < foot)
        hgt = c.cam_h - (yy - c.yh) * np.where(cols, zc, 0.0) / c.f  # height on the facade (m)
        _facade(c, (slice(None), cs), fac, zc, hgt, street, idx)
    # the far end of the street: a wall across at depth z_end
    ya = int(np.clip(np.floor(c.yh - (street["end_height"] - c.cam_h) * c.f / z_end), 0, h))
    yb = int(np.clip(np.ceil(c.yh + c.cam_h * c.f / z_end), 0, h))
    if yb > ya:
        xw = dx * z_end / c.f
        far = np.broadcast_to((xw > xl) & (xw < xr), (yb - ya, w))
        hgt = c.cam_h - (yy[ya:yb] - c.yh) * z_end / c.f
        _facade(c, (slice(ya, yb), slice(None)), far, xw, hgt, street, len(street["block_heights"]))


def _facade(c: _Canvas, region, mask, u, v, street, block_idx):
    """Paint a facade inside ``region`` (row, col slices): wall colour per block, and a window grid in facade
    coordinates (u along the wall, v up; metres). mask/u/v/block_idx broadcast to the region's shape."""
    if not mask.any():
        return
    colors = street["block_rgb"]
    bi = np.broadcast_to(block_idx, mask.shape)[mask]
    uu, vv = np.broadcast_to(u, mask.shape)[mask], np.broadcast_to(v, mask.shape)[mask]
    rgb = colors[bi % len(colors)].astype(np.float32)
    temp = np.full(uu.shape, street["wall_temp"], np.float32) + street["block_temp"][bi % len(colors)]
    floor = np.floor(vv / 3.2)
    col = np.floor(uu / 2.6)
    fv, fu = vv % 3.2, uu % 2.6
    win = (fv > 1.0) & (fv < 2.3) & (fu > 0.7) & (fu < 1.9) & (floor >= 1)
    lit = ((floor * 7.13 + col * 3.71 + bi * 1.7) % 1.0) < street["lit_fraction"]
    if c.night:
        rgb[win] = np.array([18, 22, 30], np.float32)
        rgb[win & lit] = street["window_light"]
        temp[win & lit] += 6.0
    else:
        rgb[win] = rgb[win] * 0.35 + np.array([40, 60, 80], np.float32)
        temp[win] -= 8.0  # glass reflects the cold sky
    c.rgb[region][mask] = rgb
    c.th[region][mask] = temp
    c.label[region][mask] = BUILDING


def _markings(c: _Canvas, street):
    """Road paint: dashed centre line, solid edge lines, sometimes a zebra crossing. RGB only (thermal: road)."""
    h, w = c.h, c.w
    y0 = int(np.ceil(c.yh + 1))
    if y0 >= h:
        return
    yy = np.arange(y0, h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    below = yy - c.yh
    z = c.f * c.cam_h / below
    x = (xx - c.xv) * c.cam_h / below
    rc, rhalf = street["road_center"], street["road_half"]
    near = z < 70.0
    half_w = 0.09
    m = near & (np.abs(x - rc) < half_w) & ((z % 9.0) < 4.0)
    m |= near & (np.abs(np.abs(x - rc) - (rhalf - 0.35)) < half_w)
    if street["crossing"] is not None:
        zc = street["crossing"]
        m |= (z > zc) & (z < zc + 3.5) & (np.abs(x - rc) < rhalf - 0.2) & (((x - rc) % 1.2) < 0.6)
    m &= c.label[y0:] == ROAD
    color = street["marking_rgb"]
    c.rgb[y0:][m] = color
    c.label[y0:][m] = MARKING


def _car(c: _Canvas, xm, zm):
    rng, night = c.rng, c.night
    wm, hm = rng.uniform(1.7, 2.0), rng.uniform(1.35, 1.7)
    cx, yb = c.project(xm, zm)
    s = c.f / zm  # px per metre at that depth
    w, h = wm * s, hm * s
    if h < 3:
        return
    x0, top = cx - w / 2, yb - h
    body = np.array(rng.choice([[150, 20, 20], [20, 40, 120], [200, 200, 200], [30, 30, 30], [90, 90, 95],
                                [230, 230, 225], [20, 90, 40]]), np.float32) * rng.uniform(0.8, 1.1)
    scale = 0.28 if night else 1.0
    base_t = 105.0 if night else 150.0
    # lower body, cabin, windows, tyres
    c.paint(top + 0.42 * h, x0, _box_mask(0.45 * h, w), CAR, body * scale, base_t + 8)
    c.paint(top, x0 + 0.13 * w, _box_mask(0.45 * h, 0.74 * w), CAR, body * 0.9 * scale, base_t)
    c.paint(top + 0.07 * h, x0 + 0.2 * w, _box_mask(0.3 * h, 0.6 * w), CAR,
            np.array([30, 40, 55], np.float32) * (0.5 if night else 1.0), base_t - 15)
    for tx in (x0, x0 + 0.8 * w):
        c.paint(yb - 0.2 * h, tx, _box_mask(0.2 * h, 0.2 * w), CAR, np.array([15, 15, 15], np.float32),
                base_t + 45)
    # lights: red tail lights (bright at night), a hot exhaust
    lc = np.array([255, 40, 30] if night else [170, 20, 20], np.float32)
    for lx in (x0 + 0.03 * w, x0 + 0.84 * w):
        c.paint(top + 0.5 * h, lx, _ellipse_mask(0.1 * h, 0.13 * w), CAR, lc, base_t + 12)
    c.paint(yb - 0.24 * h, x0 + 0.25 * w, _ellipse_mask(0.07 * h, 0.08 * w), CAR, None, base_t + 70)


def _person(c: _Canvas, xm, zm):
    rng, night = c.rng, c.night
    hm = rng.uniform(1.55, 1.95)
    cx, yb = c.project(xm, zm)
    s = c.f / zm
    h = hm * s
    if h < 4:
        return
    w = 0.45 * s
    top = yb - h
    shirt = np.array(rng.choice([[200, 40, 40], [40, 80, 160], [230, 200, 60], [50, 50, 50], [240, 240, 240],
                                 [60, 140, 70]]), np.float32)
    pants = np.array(rng.choice([[30, 30, 60], [40, 40, 40], [110, 90, 60]]), np.float32)
    skin = np.array(rng.choice([[225, 180, 150], [170, 120, 90], [110, 75, 55]]), np.float32)
    # Dark pedestrian: at night the person is not drawn into RGB at all -> only thermal sees them.
    vis = not night
    t_body = rng.uniform(195, 215) if night else rng.uniform(200, 225)
    head_h = 0.13 * h
    c.paint(top + head_h, cx - w / 2, _ellipse_mask(0.42 * h, w), PERSON, shirt if vis else None, t_body)
    c.paint(top + 0.5 * h, cx - 0.42 * w, _box_mask(0.5 * h, 0.36 * w), PERSON, pants if vis else None, t_body - 12)
    c.paint(top + 0.5 * h, cx + 0.06 * w, _box_mask(0.5 * h, 0.36 * w), PERSON, pants if vis else None, t_body - 12)
    c.paint(top, cx - 0.3 * w, _ellipse_mask(head_h * 1.15, 0.6 * w), PERSON, skin if vis else None, t_body + 18)


def _cone(c: _Canvas, xm, zm):
    cx, yb = c.project(xm, zm)
    s = c.f / zm
    h, w = 0.7 * s, 0.42 * s
    if h < 3:
        return
    rows = np.arange(max(int(h), 1), dtype=np.float32)[:, None]
    cols = np.arange(max(int(w), 1), dtype=np.float32)[None, :]
    half = (0.12 + 0.88 * (rows + 0.5) / max(h, 1)) * w / 2
    mask = np.abs(cols + 0.5 - w / 2) <= half
    band = (rows >= 0.4 * h) & (rows < 0.58 * h)
    scale = 0.45 if c.night else 1.0
    orange = np.array([240, 110, 20], np.float32) * scale
    white = np.array([235, 235, 235], np.float32) * (0.7 if c.night else 1.0)
    # RGB only: a cone has the ambient temperature of the road it stands on.
    c.paint(yb - h, cx - w / 2, mask & ~band, CONE, orange, None)
    c.paint(yb - h, cx - w / 2, mask & band, CONE, white, None)


def _street(rng, night):
    light = float(rng.uniform(0.75, 1.15))
    road_half = float(rng.uniform(3.0, 5.0))
    road_center = float(rng.uniform(-1.5, 1.5))
    side_w_l, side_w_r = (float(v) for v in rng.uniform(1.5, 4.0, 2))
    edges = np.concatenate([[0.0], np.cumsum(rng.uniform(8, 25, 16))])
    wall = np.array([[190, 170, 140], [150, 80, 60], [160, 160, 160], [210, 200, 180], [110, 100, 95],
                     [180, 140, 100]], np.float32)
    block_rgb = wall[rng.integers(0, len(wall), len(edges))] * rng.uniform(0.8, 1.1, (len(edges), 1))
    if night:
        block_rgb = block_rgb * 0.16
        road_rgb = np.array([28, 28, 32], np.float32)
        side_rgb = np.array([38, 36, 36], np.float32)
        marking = np.array([120, 120, 110], np.float32)
    else:
        road_rgb = np.array([85, 85, 90], np.float32) * light
        side_rgb = np.array([150, 145, 140], np.float32) * light
        marking = np.array(rng.choice([[235, 235, 230], [230, 200, 60]]), np.float32) * min(light, 1.0)
        block_rgb = block_rgb * light
    lamps = [(road_center + sgn * (road_half + 0.8), z0 + k * 22.0)
             for sgn, z0 in ((-1, float(rng.uniform(3, 15))), (1, float(rng.uniform(3, 15)))) for k in range(4)]
    return {
        "light": light,
        "road_half": road_half,
        "road_center": road_center,
        "facade_l": road_center - road_half - side_w_l,
        "facade_r": road_center + road_half + side_w_r,
        "z_end": float(rng.uniform(90, 200)),
        "block_edges": edges,
        "block_heights": rng.uniform(6, 28, len(edges)).astype(np.float32),
        "end_height": float(rng.uniform(10, 30)),
        "block_rgb": block_rgb,
        "block_temp": rng.uniform(-8, 8, len(edges)).astype(np.float32),
        "wall_temp": 92.0 if night else 128.0,
        "lit_fraction": float(rng.uniform(0.15, 0.5)),
        "window_light": np.array([230, 200, 110], np.float32) * rng.uniform(0.7, 1.0),
        "road_rgb": road_rgb,
        "side_rgb": side_rgb,
        "road_temp": 84.0 if night else float(rng.uniform(140, 160)),
        "side_temp": 78.0 if night else float(rng.uniform(125, 140)),
        "marking_rgb": marking,
        "crossing": rng.uniform(8, 25) if rng.random() < 0.4 else None,
        "lamps": lamps,
    }


@functools.lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    # Drawing ~1M normals per scene costs more than the whole rendering; a fixed table read at a seeded offset is
    # just as deterministic and indistinguishable to the eye or a network.
    return np.random.default_rng(0x5EED).standard_normal(1 << 21, dtype=np.float32)


def _noise(rng, shape, sigma: float, offset: float = 0.0) -> np.ndarray:
    n = int(np.prod(shape))
    table = _noise_table()
    if n > table.size // 2:
        noise = rng.standard_normal(shape, dtype=np.float32)
    else:
        start = int(rng.integers(0, table.size - n))
        noise = table[start:start + n].reshape(shape)
    return noise * sigma + offset


def _blur121(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur along rows and columns (edges replicated)."""
    for _ in range(passes):
        p = np.concatenate([a[:1], a, a[-1:]], axis=0)
        a = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
        p = np.concatenate([a[:, :1], a, a[:, -1:]], axis=1)
        a = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * 0.25
    return a


def make_scene(seed: int, height: int = 480, width: int = 640, night: bool | None = None) -> dict:
    """One scene: ``{"rgb": (H,W,3) uint8 RGB, "x": (H,W) uint8 thermal, "label": (H,W) uint8, "night": bool}``.

    Deterministic for a given (seed, height, width, night). ``night=None`` draws day or night from the seed.
    """
    if height < 8 or width < 8:
        raise ValueError(f"scene size must be at least 8x8, got {width}x{height}")
    rng = np.random.default_rng(int(seed))
    night_draw = rng.random() < 0.5
    night = bool(night_draw if night is None else night)
    c = _Canvas(height, width, rng, night)
    street = _street(rng, night)
    _background(c, street)
    _markings(c, street)

    rc, rhalf = street["road_center"], street["road_half"]
    objects = []
    for _ in range(rng.integers(0, 4)):  # cars in the lanes
        lane = rc + rng.choice([-0.5, 0.5]) * rhalf + rng.uniform(-0.3, 0.3)
        objects.append((rng.uniform(5, 45), _car, lane))
    for _ in range(rng.integers(1, 6)):  # people: mostly on the sidewalks, sometimes crossing
        if rng.random() < 0.7:
            xs = (rng.uniform(street["facade_l"] + 0.4, rc - rhalf - 0.2) if rng.random() < 0.5
                  else rng.uniform(rc + rhalf + 0.2, street["facade_r"] - 0.4))
        else:
            xs = rc + rng.uniform(-rhalf, rhalf) * 0.9
        objects.append((rng.uniform(3.5, 28), _person, xs))
    for _ in range(rng.integers(1, 6)):  # cones near the road edges or the centre
        xs = rc + rng.choice([-1, 1]) * rng.uniform(0.3, rhalf - 0.3)
        objects.append((rng.uniform(3.5, 22), _cone, xs))
    for z, draw, xs in sorted(objects, key=lambda o: -o[0]):  # painter's order: far to near
        draw(c, xs, z)

    # sensor effects: slight blur and noise on RGB (more at night); blurrier thermal with column fixed-pattern
    # noise and a smooth gain field. Both images get +0.5 so the final cast rounds.
    rgb = _blur121(c.rgb)
    rgb += _noise(rng, rgb.shape, 7.0 if night else 3.5, 0.5)
    th = _blur121(c.th, passes=2)
    yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    gx, gy = (float(v) for v in rng.uniform(-0.06, 0.06, 2))
    th *= 1.0 + gx * xx + gy * yy - 0.05 * (xx * xx + yy * yy)
    th += rng.normal(0, 1.2, (1, width)).astype(np.float32)
    th += _noise(rng, th.shape, 2.0, 0.5)
    np.clip(rgb, 0, 255, out=rgb)
    np.clip(th, 0, 255, out=th)
    return {
        "rgb": rgb.astype(np.uint8),
        "x": th.astype(np.uint8),
        "label": c.label,
        "night": night,
    }


def scene_seed(seed: int, index: int) -> int:
    """The scene seed of item ``index`` in a dataset generated with ``seed`` (independent streams per item)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def write_synthetic_dataset(out_dir, n_train: int = 32, n_test: int = 8, height: int = 480, width: int = 640,
                            seed: int = 0, night_fraction: float = 0.5) -> Path:
    """Write scenes in the Sigma layout: ``RGB/``, ``Modal/`` (8-bit thermal), ``Label/`` PNGs, ``train.txt``,
    ``test.txt`` (names without extension), plus ``classes.yaml`` (for ``--config``) and ``synthetic.json``.

    Names are ``syn_<index>N`` / ``syn_<index>D`` (night/day, as MFNet names its frames). Returns ``out_dir``.
    """
    from PIL import Image

    out = Path(out_dir)
    for sub in ("RGB", "Modal", "Label"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = {"train": [], "test": []}
    n_night = 0
    for i in range(n_train + n_test):
        s = scene_seed(seed, i)
        night = bool(np.random.default_rng(s ^ 0x5EED).random() < night_fraction)
        scene = make_scene(s, height, width, night=night)
        n_night += night
        name = f"syn_{i:05d}{'N' if night else 'D'}"
        Image.fromarray(scene["rgb"], "RGB").save(out / "RGB" / f"{name}.png", compress_level=1)
        Image.fromarray(scene["x"], "L").save(out / "Modal" / f"{name}.png", compress_level=1)
        Image.fromarray(scene["label"], "L").save(out / "Label" / f"{name}.png", compress_level=1)
        names["train" if i < n_train else "test"].append(name)
    for split, items in names.items():
        (out / f"{split}.txt").write_text("".join(n + "\n" for n in items))
    palette = [[int(v) for v in row] for row in SYNTHETIC_PALETTE]
    (out / "classes.yaml").write_text(
        "dataset: synthetic\n"
        f"class_names: {json.dumps(SYNTHETIC_CLASS_NAMES)}\n"
        f"palette: {json.dumps(palette)}\n"
        "modality: thermal\n"
        "preprocessing: rgb\n")
    (out / "synthetic.json").write_text(json.dumps({
        "generator": "sigma_ros.data.synthetic", "seed": seed, "height": height, "width": width,
        "n_train": n_train, "n_test": n_test, "night": n_night, "class_names": SYNTHETIC_CLASS_NAMES,
    }, indent=2) + "\n")
    return out
