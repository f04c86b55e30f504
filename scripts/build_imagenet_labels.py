"""Build ``vpg_pipelines/data/imagenet_id2label.json`` (the 1000 ImageNet-1k class names).

Source: the synset list and synset->lemma table that the `timm` wheel ships
(``timm/data/_info/imagenet_synsets.txt``, ``imagenet_synset_to_lemma.txt``). Class ``i`` is the
``i``-th synset in sorted WordNet-id order, the standard ImageNet-1k indexing used by VAR and DiT.

    pip download --no-deps timm -d /tmp/timm && unzip -o /tmp/timm/timm-*.whl 'timm/data/_info/*' -d /tmp/timm
    python scripts/build_imagenet_labels.py /tmp/timm/timm/data/_info
"""

import json
import sys
from pathlib import Path


def main(info_dir: str) -> None:
    info = Path(info_dir)
    synsets = info.joinpath("imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lines = info.joinpath("imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
    lemmas = dict(line.split("\t", 1) for line in lines)
    if len(synsets) != 1000:
        raise SystemExit(f"expected 1000 synsets, found {len(synsets)}")
    id2label = {str(i): lemmas[s].strip() for i, s in enumerate(synsets)}
    out = Path(__file__).resolve().parents[1] / "vpg_pipelines" / "data" / "imagenet_id2label.json"
    out.write_text(json.dumps(id2label, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(id2label)} classes)")


if __name__ == "__main__":
    main(sys.argv[1])
