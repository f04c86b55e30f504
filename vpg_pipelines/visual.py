"""Small picture helpers: labelled comparison grids for "without VPG | with VPG"."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

Cell = Image.Image | Sequence[Image.Image]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _strip(cell: Cell) -> list[Image.Image]:
    return [cell] if isinstance(cell, Image.Image) else list(cell)


def comparison_grid(
    columns: Sequence[Sequence[Cell]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    cell: int | None = None,
    padding: int = 6,
) -> Image.Image:
    """Columns of images side by side with a title above each column (and optionally each row).

    ``columns[c][r]`` is the entry of row ``r`` in column ``c``: one image, or a sequence of images
    shown as a strip (e.g. the same seeds with and without VPG). Every column must have the same
    number of rows and strips in one column the same length. Images are resized (nearest, so small
    images stay crisp) to ``cell`` pixels.
    """
    if not columns or len(columns) != len(column_titles):
        raise ValueError("`columns` and `column_titles` must be non-empty and of the same length")
    strips = [[_strip(entry) for entry in column] for column in columns]
    rows = len(strips[0])
    if any(len(c) != rows for c in strips):
        raise ValueError("every column needs the same number of rows")
    counts = [len(column[0]) if column else 1 for column in strips]
    if any(len(s) != n for column, n in zip(strips, counts) for s in column):
        raise ValueError("strips in one column must hold the same number of images")
    cell = cell or max(128, max(im.width for col in strips for s in col for im in s))
    font = _font(max(12, min(cell // 10, 20)))
    title_h = font.getbbox("Ag")[3] + 2 * padding
    left = 0
    if row_titles is not None:
        left = max(font.getbbox(t)[2] for t in row_titles) + 2 * padding
    gap = 3 * padding  # between columns; images inside a strip sit `padding // 3` apart
    inner = max(1, padding // 3)
    widths = [n * cell + (n - 1) * inner for n in counts]
    width = left + sum(widths) + gap * (len(columns) - 1) + 2 * padding
    height = title_h + rows * (cell + padding) + padding
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    x = left + padding
    for title, column, w in zip(column_titles, strips, widths):
        tw = font.getbbox(title)[2]
        draw.text((x + (w - tw) // 2, padding), title, fill="black", font=font)
        for r, strip in enumerate(column):
            y = title_h + r * (cell + padding)
            for i, image in enumerate(strip):
                grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (x + i * (cell + inner), y))
        x += w + gap
    if row_titles is not None:
        for r, title in enumerate(row_titles):
            y = title_h + r * (cell + padding) + cell // 2 - title_h // 2
            draw.text((padding, y), title, fill="black", font=font)
    return grid


def comparison_video(
    columns: Sequence[Sequence[Sequence[Image.Image]]],
    column_titles: Sequence[str],
    padding: int = 6,
) -> list[Image.Image]:
    """Videos side by side, each frame at its own size, with a title above each column.

    ``columns[c][r]`` is the frame list of the video in row ``r`` of column ``c`` (e.g. the same seeds
    without and with VPG). All videos must have the same size and number of frames. The returned
    frames have even sides (what H.264 in yuv420p needs).
    """
    if not columns or len(columns) != len(column_titles):
        raise ValueError("`columns` and `column_titles` must be non-empty and of the same length")
    rows = len(columns[0])
    videos = [video for column in columns for video in column]
    if rows == 0 or any(len(column) != rows for column in columns):
        raise ValueError("every column needs the same (non-zero) number of videos")
    count, (w, h) = len(videos[0]), videos[0][0].size
    if any(len(v) != count or any(f.size != (w, h) for f in v) for v in videos):
        raise ValueError("all videos need the same number of frames and the same size")
    font = _font(max(12, min(w // 10, 20)))
    title_h = font.getbbox("Ag")[3] + 2 * padding
    width = len(columns) * w + (len(columns) + 1) * padding
    height = title_h + rows * (h + padding)
    width, height = width + width % 2, height + height % 2
    header = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(header)
    for c, title in enumerate(column_titles):
        x = padding + c * (w + padding)
        draw.text((x + (w - font.getbbox(title)[2]) // 2, padding), title, fill="black", font=font)
    frames = []
    for i in range(count):
        frame = header.copy()
        for c, column in enumerate(columns):
            for r, video in enumerate(column):
                frame.paste(video[i].convert("RGB"), (padding + c * (w + padding), title_h + r * (h + padding)))
        frames.append(frame)
    return frames
