"""Small picture helpers: labelled comparison grids for "without VPG | with VPG"."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def comparison_grid(
    columns: Sequence[Sequence[Image.Image]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    cell: int | None = None,
    padding: int = 6,
) -> Image.Image:
    """Columns of images side by side with a title above each column (and optionally each row).

    ``columns[c][r]`` is the image of row ``r`` in column ``c``; every column must have the same
    number of rows. Images are resized (nearest, so small images stay crisp) to ``cell`` pixels.
    """
    if not columns or len(columns) != len(column_titles):
        raise ValueError("`columns` and `column_titles` must be non-empty and of the same length")
    rows = len(columns[0])
    if any(len(c) != rows for c in columns):
        raise ValueError("every column needs the same number of images")
    cell = cell or max(128, max(im.width for col in columns for im in col))
    font = _font(max(12, cell // 10))
    title_h = font.getbbox("Ag")[3] + 2 * padding
    left = 0
    if row_titles is not None:
        left = max(font.getbbox(t)[2] for t in row_titles) + 2 * padding
    width = left + len(columns) * (cell + padding) + padding
    height = title_h + rows * (cell + padding) + padding
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for c, (title, images) in enumerate(zip(column_titles, columns)):
        x = left + padding + c * (cell + padding)
        tw = font.getbbox(title)[2]
        draw.text((x + (cell - tw) // 2, padding), title, fill="black", font=font)
        for r, image in enumerate(images):
            y = title_h + r * (cell + padding)
            grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
    if row_titles is not None:
        for r, title in enumerate(row_titles):
            y = title_h + r * (cell + padding) + cell // 2 - title_h // 2
            draw.text((padding, y), title, fill="black", font=font)
    return grid
