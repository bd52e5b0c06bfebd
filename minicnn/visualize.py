"""Pictures of what a net learned and computes: filter grids and feature-map grids as PNGs.

    net = minicnn.Net("deploy.prototxt", "weights.caffemodel", minicnn.TEST)
    save_png(filter_grid(net.params["conv1"][0].data), "conv1_filters.png")
    net.forward(data=batch)
    save_png(feature_map_grid(net.blobs["conv1"].data[0]), "conv1_maps.png")

The layout follows the filter-visualisation notebook of Caffe's examples: tiles in rows, a
1-pixel separator between them, each tile stretched to the full 0..255 range. Filters with 3
input channels are shown in colour (their channels are BGR, as Caffe nets see images, so they
are flipped to RGB for display); other filters show each input channel as a gray tile, one row
per filter. Small tiles are enlarged (nearest neighbour) so that a 7 x 7 filter is readable.
"""

import math
import os

import numpy as np

from minicnn.errors import MinicnnError

_TILE_PIXELS = 32          # automatic scale: enlarge tiles to about this many pixels ...
_IMAGE_PIXELS = 2048       # ... while the whole picture stays below this many


def _normalise(x):
    """x stretched to [0, 255] (a constant x becomes 0)."""
    x = np.asarray(x, dtype=np.float64)
    low, high = np.nanmin(x), np.nanmax(x)
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(x.shape, np.uint8)
    return np.round((x - low) * (255.0 / (high - low))).astype(np.uint8)


def _auto_scale(tile_h, tile_w, rows, cols):
    largest = max(tile_h, tile_w)
    fit = _IMAGE_PIXELS // max(rows * tile_h, cols * tile_w, 1)
    return max(1, min(math.ceil(_TILE_PIXELS / largest), fit))


def _grid_shape(n):
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def tile(tiles, rows, cols, scale=None, separator=255):
    """uint8 tiles (n, h, w) or (n, h, w, 3) laid out row by row on a rows x cols grid,
    enlarged ``scale`` times (None: automatic) with 1-pixel ``separator`` lines between them.
    The picture is rows * h * scale + rows - 1 by cols * w * scale + cols - 1 pixels."""
    tiles = np.asarray(tiles, dtype=np.uint8)
    n, h, w = tiles.shape[:3]
    if n > rows * cols:
        raise MinicnnError(f"{n} tiles do not fit a {rows} x {cols} grid")
    scale = _auto_scale(h, w, rows, cols) if scale is None else int(scale)
    if scale < 1:
        raise MinicnnError(f"scale must be a positive integer, not {scale}")
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, *tiles.shape[3:]), separator,
                  np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = t
    return out


def filter_grid(weights, scale=None, bgr=True, separator=255):
    """Convolution filters (F, C, kh, kw) as one uint8 picture, each filter normalised to
    0..255 on its own. C = 3: a square-ish grid of F colour tiles (H x W x 3; ``bgr`` flips
    the channels to RGB). Otherwise a gray picture: C = 1 a square-ish grid of F tiles, else F
    rows of C tiles (one per input channel)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4 or 0 in w.shape:
        raise MinicnnError(f"filters must be (filters, channels, height, width), not shape "
                           f"{w.shape}")
    f, c, kh, kw = w.shape
    tiles = np.stack([_normalise(one) for one in w])           # (F, C, kh, kw) uint8
    if c == 3:
        if bgr:
            tiles = tiles[:, ::-1]
        return tile(tiles.transpose(0, 2, 3, 1), *_grid_shape(f), scale, separator)
    if c == 1:
        return tile(tiles[:, 0], *_grid_shape(f), scale, separator)
    return tile(tiles.reshape(f * c, kh, kw), f, c, scale, separator)


def feature_map_grid(blob_data, scale=None, each=False, separator=255):
    """The C feature maps of one item, (C, H, W) (or (1, C, H, W), or a (C,) vector as 1 x 1
    maps), as a square-ish grid of gray tiles. The maps share one 0..255 stretch, so their
    strengths compare; ``each=True`` stretches every map on its own."""
    x = np.asarray(blob_data, dtype=np.float64)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 1:
        x = x[:, None, None]
    elif x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or 0 in x.shape:
        raise MinicnnError(f"feature maps must be (channels, height, width) of one item, not "
                           f"shape {np.shape(blob_data)}")
    tiles = np.stack([_normalise(m) for m in x]) if each else _normalise(x)
    return tile(tiles, *_grid_shape(len(x)), scale, separator)


def save_png(image, path):
    """Write a uint8 picture (H x W gray or H x W x 3 RGB) as a PNG; returns the path."""
    from minicnn.data.errors import need
    Image = need("PIL.Image", "Pillow")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise MinicnnError(f"save_png takes a uint8 H x W (x 3) picture, not {image.dtype} of "
                           f"shape {image.shape}")
    path = os.fspath(path)
    folder = os.path.dirname(path)
    try:
        if folder:
            os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(path, format="PNG")
    except (OSError, ValueError) as e:
        raise MinicnnError(f"{path}: cannot write the picture ({e})") from None
    return path
