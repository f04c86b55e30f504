"""Render the Noto Color Emoji set into a small labelled 32x32 image dataset.

Source: every fully-qualified emoji of Unicode's ``emoji-test.txt`` (Debian ``unicode-data``),
drawn with the Noto Color Emoji bitmap font (Debian ``fonts-noto-color-emoji``). Labels are
merged Unicode emoji subgroups (see ``CLASSES``). The held-out split is stratified per class and
keyed on a hash of the emoji's code points with skin-tone modifiers removed, so all skin-tone
variants of one emoji fall on the same side.

Output: ``training/data/emoji32.npz`` with ``images`` (N, 32, 32, 3) uint8, ``labels`` (N,) int64,
``heldout`` (N,) bool, ``augmented`` (N,) bool, ``source`` (N,) int64 (row of the un-augmented
original) and ``codepoints`` (N,) str; plus ``training/data/labels.json`` ({id: name}).

    python training/build_emoji_dataset.py [--size 32] [--hflip]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only strike of the CBDT font
OUT_DIR = Path(__file__).resolve().parent / "data"
SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
HELDOUT_PERCENT = 10

# class name -> the emoji-test subgroups it merges (chosen for >= ~20 members and a visual theme).
CLASSES: dict[str, tuple[str, ...]] = {
    "face-happy": ("face-smiling", "face-affection", "face-tongue", "face-hand"),
    "face-unhappy": ("face-concerned", "face-negative"),
    "face-other": ("face-neutral-skeptical", "face-sleepy", "face-unwell", "face-hat", "face-glasses"),
    "face-creature": ("face-costume", "cat-face", "monkey-face"),
    "heart-emotion": ("heart", "emotion"),
    "hand": ("hand-fingers-open", "hand-fingers-partial", "hand-single-finger", "hand-fingers-closed",
             "hands", "hand-prop"),
    "body-part": ("body-parts",),
    "person": ("person", "person-gesture", "person-resting", "person-symbol"),
    "person-role": ("person-role",),
    "person-fantasy": ("person-fantasy",),
    "person-activity": ("person-activity", "person-sport"),
    "family": ("family",),
    "animal-mammal": ("animal-mammal",),
    "animal-other": ("animal-bird", "animal-amphibian", "animal-reptile", "animal-marine", "animal-bug"),
    "plant": ("plant-flower", "plant-other"),
    "food-fruit-veg": ("food-fruit", "food-vegetable"),
    "food-prepared": ("food-prepared", "food-asian", "food-marine", "food-sweet"),
    "drink-dishware": ("drink", "dishware"),
    "place": ("place-map", "place-geographic", "place-building", "place-religious", "place-other", "hotel"),
    "transport": ("transport-ground", "transport-water", "transport-air"),
    "sky-time": ("sky & weather", "time"),
    "activity": ("event", "award-medal", "sport", "game", "arts & crafts"),
    "clothing": ("clothing",),
    "object-paper-office": ("book-paper", "money", "mail", "writing", "office"),
    "object-tech-sound": ("sound", "music", "musical-instrument", "phone", "computer", "light & video"),
    "object-tool-home": ("lock", "tool", "science", "medical", "household", "other-object"),
    "symbol-text": ("alphanum", "keycap", "punctuation", "currency", "math"),
    "symbol-sign": ("transport-sign", "warning", "arrow", "av-symbol", "gender"),
    "symbol-other": ("religion", "zodiac", "geometric", "other-symbol"),
    "flag": ("flag", "country-flag", "subdivision-flag"),
}


@dataclass(frozen=True)
class Emoji:
    codepoints: tuple[int, ...]
    group: str
    subgroup: str
    name: str

    @property
    def text(self) -> str:
        return "".join(chr(c) for c in self.codepoints)

    @property
    def key(self) -> str:
        return " ".join(f"{c:04X}" for c in self.codepoints)


def read_emoji_test(path: Path) -> list[Emoji]:
    """Fully-qualified entries of emoji-test.txt, in file order."""
    out: list[Emoji] = []
    group = subgroup = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            fields, _, comment = line.partition("#")
            cps, status = (f.strip() for f in fields.split(";"))
            if status != "fully-qualified":
                continue
            name = comment.strip().split(" ", 2)[-1]  # "<emoji> E<ver> <name>"
            out.append(Emoji(tuple(int(c, 16) for c in cps.split()), group, subgroup, name))
    return out


def base_key(emoji: Emoji) -> str:
    """The code points without skin-tone modifiers: all skin-tone variants share it."""
    return " ".join(f"{c:04X}" for c in emoji.codepoints if c not in SKIN_TONES)


def heldout_keys(emojis: list[Emoji], labels: list[int]) -> set[str]:
    """Deterministic stratified split: per class, the ~10% of base keys with the smallest SHA-256."""
    per_class: dict[int, set[str]] = {}
    for emoji, label in zip(emojis, labels):
        per_class.setdefault(label, set()).add(base_key(emoji))
    held: set[str] = set()
    for keys in per_class.values():
        ranked = sorted(keys, key=lambda k: hashlib.sha256(k.encode("ascii")).digest())
        held.update(ranked[: max(1, round(len(ranked) * HELDOUT_PERCENT / 100))])
    return held


def render(emoji: Emoji, font: ImageFont.FreeTypeFont, size: int) -> np.ndarray | None:
    """The emoji centred on white at ``size``x``size``; None if the font draws no single glyph."""
    advance = font.getlength(emoji.text)
    if advance <= 0 or advance > 1.5 * font.getlength("\U0001F600"):  # wider than one glyph: no ligature
        return None
    canvas = Image.new("RGBA", (192, 192), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((28, 32), emoji.text, font=font, embedded_color=True)
    alpha = np.asarray(canvas.getchannel("A"))
    if (alpha > 16).sum() < 64:  # blank / missing glyph
        return None
    rgb = np.asarray(canvas.convert("RGB")).astype(np.float32)
    if alpha.max() > 0 and rgb[alpha > 16].std() < 1.0:  # flat-colour tofu box
        return None
    box = canvas.getbbox()
    assert box is not None
    left, top, right, bottom = box
    side = max(right - left, bottom - top) + 4  # small margin, square, centred on the content
    cx, cy = (left + right) / 2, (top + bottom) / 2
    square = (round(cx - side / 2), round(cy - side / 2), round(cx - side / 2) + side, round(cy - side / 2) + side)
    white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, canvas).convert("RGB")  # composite before resampling: no fringes
    crop = flat.crop(square)  # crop outside the canvas fills black; the canvas margin avoids that
    return np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji-test", type=Path, default=EMOJI_TEST)
    parser.add_argument("--font", type=Path, default=FONT)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--hflip", action="store_true",
                        help="add a mirrored copy of each training image (not for text, signs or flags)")
    args = parser.parse_args()

    for path, pkg in ((args.emoji_test, "unicode-data"), (args.font, "fonts-noto-color-emoji")):
        if not path.exists():
            raise SystemExit(f"{path} not found: apt-get install -y {pkg}")

    names = list(CLASSES)
    subgroup_to_class = {sg: i for i, name in enumerate(names) for sg in CLASSES[name]}
    font = ImageFont.truetype(str(args.font), FONT_SIZE)
    no_flip = {names.index(n) for n in ("symbol-text", "symbol-sign", "flag")}

    rendered: list[tuple[Emoji, int, np.ndarray]] = []
    skipped_render, skipped_class = [], []
    for emoji in read_emoji_test(args.emoji_test):
        label = subgroup_to_class.get(emoji.subgroup)
        if label is None:
            skipped_class.append(emoji)
            continue
        img = render(emoji, font, args.size)
        if img is None:
            skipped_render.append(emoji)
            continue
        rendered.append((emoji, label, img))
    held_keys = heldout_keys([e for e, _, _ in rendered], [lab for _, lab, _ in rendered])

    images, labels, heldout, augmented, source, keys = [], [], [], [], [], []
    for emoji, label, img in rendered:
        row = len(images)
        held = base_key(emoji) in held_keys
        images.append(img)
        labels.append(label)
        heldout.append(held)
        augmented.append(False)
        source.append(row)
        keys.append(emoji.key)
        if args.hflip and not held and label not in no_flip:
            images.append(img[:, ::-1].copy())
            labels.append(label)
            heldout.append(False)
            augmented.append(True)
            source.append(row)
            keys.append(emoji.key)

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out / "emoji32.npz",
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        heldout=np.asarray(heldout, dtype=bool),
        augmented=np.asarray(augmented, dtype=bool),
        source=np.asarray(source, dtype=np.int64),
        codepoints=np.asarray(keys),
    )
    (args.out / "labels.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}, indent=1) + "\n",
                                          encoding="utf-8")

    lab, held, aug = np.asarray(labels), np.asarray(heldout), np.asarray(augmented)
    print(f"{'id':>2} {'class':<20} {'train':>6} {'heldout':>7} {'(+aug)':>6}")
    for i, name in enumerate(names):
        m = lab == i
        print(f"{i:>2} {name:<20} {(m & ~held & ~aug).sum():>6} {(m & held).sum():>7} {(m & aug).sum():>6}")
    print(f"total {len(lab)} images ({(~aug).sum()} emoji, {aug.sum()} augmented), "
          f"train {(~held).sum()}, held-out {held.sum()}")
    counts = Counter(e.subgroup for e in skipped_class)
    print(f"skipped: {len(skipped_render)} not renderable, {len(skipped_class)} in unused subgroups {dict(counts)}")
    for e in skipped_render[:20]:
        print(f"  not renderable: {e.key} {e.name}")


if __name__ == "__main__":
    main()
