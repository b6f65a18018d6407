"""A picture of a TileMap as SVG: tiles in a grid, blocks coloured per layer, a legend.

Drawing rules: tiles are laid left to right, top to bottom, each as a grey
rectangle (grey = unused cells) scaled to its rows x cols, labelled with its id
and utilization; crossbar rows (inputs) run down, columns (outputs) run right.
Each block is a rectangle in its layer's colour at its offset, numbered with
the layer's legend number where it is large enough, with a tooltip (title)
naming layer, slice, weight rows and columns. The legend lists the layers by
number with their blocks and tiles. There is exactly one rect per tile and one
per block (legend swatches are circles).
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from afmc.mapping.tile_map import TileMap

MARGIN, GAP, LABEL, LINE = 20, 16, 16, 18


def _colour(index: int) -> str:
    """Well-separated colours: hues a golden angle apart."""
    red, green, blue = colorsys.hls_to_rgb((index * 0.381966) % 1.0, 0.55, 0.65)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def _text(x: float, y: float, content: str, size: int = 12, **attributes: str) -> str:
    extra = "".join(
        f" {key.replace('_', '-')}={quoteattr(value)}" for key, value in attributes.items()
    )
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}"{extra}>{escape(content)}</text>'


def tile_map_svg(tile_map: TileMap, namespace: bool = True) -> str:
    """The SVG document of `tile_map`; without `namespace`, the root has no xmlns (an
    element to put inline in an HTML page, where the parser supplies it)."""
    per_row = max(1, min(20, math.ceil(math.sqrt(tile_map.tiles))))
    side = max(48, min(200, 800 // per_row))
    scale = side / max(tile_map.rows, tile_map.cols)
    tile_w, tile_h = tile_map.cols * scale, tile_map.rows * scale
    layers = list(tile_map.layer_tiles())
    number = {layer: index for index, layer in enumerate(layers)}
    header = [
        f"afmc tile map: strategy {tile_map.strategy}, {tile_map.tiles} tiles of "
        f"{tile_map.rows} x {tile_map.cols}, utilization {tile_map.utilization:.1%}",
        "rows = inputs (down), columns = outputs (right), grey = unused cells",
    ]
    body: list[str] = [
        _text(MARGIN, MARGIN + LINE * i, line, 14 - i * 2) for i, line in enumerate(header)
    ]
    top = MARGIN + LINE * len(header)
    grid_rows = math.ceil(tile_map.tiles / per_row)
    for tile, (placed, used) in enumerate(
        zip(tile_map.by_tile(), tile_map.tile_utilization(), strict=True)
    ):
        x = MARGIN + (tile % per_row) * (tile_w + GAP)
        y = top + (tile // per_row) * (tile_h + GAP + LABEL) + LABEL
        label = f"tile {tile}: {used:.1%}" if side >= 100 else f"{tile}: {used:.0%}"
        body.append(_text(x, y - 4, label, 11 if side >= 100 else 9))
        body.append(
            f'<rect class="tile" x="{x:.1f}" y="{y:.1f}" width="{tile_w:.1f}" '
            f'height="{tile_h:.1f}" fill="#eeeeee" stroke="#444444"/>'
        )
        for placement in placed:
            block = placement.block
            bx, by = x + placement.col * scale, y + placement.row * scale
            bw, bh = block.width * scale, block.height * scale
            tip = (
                f"{block.layer} slice {block.slice}: weight rows {block.rows[0]}-"
                f"{block.rows[1]}, columns {block.cols[0]}-{block.cols[1]} at tile {tile} "
                f"({placement.row}, {placement.col})"
            )
            body.append(
                f'<rect class="block" x="{bx:.2f}" y="{by:.2f}" width="{bw:.2f}" '
                f'height="{bh:.2f}" fill="{_colour(number[block.layer])}" '
                f'stroke="#ffffff" stroke-width="0.5"><title>{escape(tip)}</title></rect>'
            )
            if bw >= 18 and bh >= 13:
                body.append(
                    _text(
                        bx + bw / 2,
                        by + bh / 2 + 4,
                        str(number[block.layer]),
                        10,
                        text_anchor="middle",
                    )
                )
    legend_top = top + grid_rows * (tile_h + GAP + LABEL) + GAP
    tiles_of = tile_map.layer_tiles()
    blocks_of = {layer: 0 for layer in layers}
    for placement in tile_map.placements:
        blocks_of[placement.block.layer] += 1
    for index, layer in enumerate(layers):
        y = legend_top + index * LINE
        body.append(f'<circle cx="{MARGIN + 6}" cy="{y - 4}" r="6" fill="{_colour(index)}"/>')
        body.append(
            _text(
                MARGIN + 18,
                y,
                f"{index}  {layer}: {blocks_of[layer]} blocks on {tiles_of[layer]} tiles",
                12,
            )
        )
    width = max(MARGIN * 2 + per_row * (tile_w + GAP), 640)
    height = legend_top + len(layers) * LINE + MARGIN
    xmlns = ' xmlns="http://www.w3.org/2000/svg"' if namespace else ""
    return (
        f'<svg{xmlns} width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" '
        f'style="background:#ffffff">\n' + "\n".join(body) + "\n</svg>\n"
    )


def write_tile_map_svg(tile_map: TileMap, path: Path) -> Path:
    """Draw `tile_map` into the SVG file `path` (parents created); returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tile_map_svg(tile_map))
    return path
