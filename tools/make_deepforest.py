"""Builds the real-photo detection benchmark from the two large NEON aerial crops in the deepforest wheel.

    pip download deepforest==2.1.0 --no-deps -d wheels
    python3 tools/make_deepforest.py wheels/deepforest-2.1.0-py3-none-any.whl data/deepforest
    mistnet-cloud job --data data/deepforest --imgsz 320 --out runs/deepforest

The two sites are disjoint, as the cloud's public data and the edges' private data would be:
- `2019_YELL_2_541000_4977000_image_crop.png` (1249x1035, 279 trees) is the cloud's public split: train =
  TILE-pixel tiles at a stride of TILE/2 above the bottom band, val = the bottom band's non-overlapping tiles.
- `2019_YELL_2_528000_4978000_image_crop2.png` (2299x2472, 574 trees) is the private data: non-overlapping tiles;
  the bottom two rows are the held-out private split, the rest are dealt row-major to the edges in turn.

Boxes come from the Pascal VOC files beside the images (class 0, "Tree"). A box is kept in a tile when at least
half of its area lies inside, clipped to the tile. `--downscale F` shrinks both photos first (the tests' fixture:
`--downscale 2.5 --tile 128 --format jpg`, the 320-pixel layout at 128 pixels). Writes the layout
`mistnet-cloud job --data` expects (public.yaml, private.yaml, private-val.yaml, private/edge-<k>.yaml), YOLO
labels beside the images, and README.md with the counts. Needs Pillow.
"""
import argparse
import io
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from PIL import Image

PUBLIC = "2019_YELL_2_541000_4977000_image_crop"
PRIVATE = "2019_YELL_2_528000_4978000_image_crop2"
NAMES = ["Tree"]


def read_site(wheel: zipfile.ZipFile, stem: str, downscale: float):
    Image.MAX_IMAGE_PIXELS = None
    image = Image.open(io.BytesIO(wheel.read(f"deepforest/data/{stem}.png"))).convert("RGB")
    root = ET.fromstring(wheel.read(f"deepforest/data/{stem}.xml"))
    boxes = []
    for obj in root.iter("object"):
        b = obj.find("bndbox")
        boxes.append(tuple(float(b.find(k).text) / downscale for k in ("xmin", "ymin", "xmax", "ymax")))
    if downscale != 1:
        image = image.resize((round(image.width / downscale), round(image.height / downscale)), Image.LANCZOS)
    return image, boxes


def tile_labels(boxes, x0: int, y0: int, tile: int):
    """YOLO lines (class cx cy w h, normalised) of the boxes at least half inside the tile."""
    lines = []
    for xmin, ymin, xmax, ymax in boxes:
        cx0, cy0, cx1, cy1 = max(xmin, x0), max(ymin, y0), min(xmax, x0 + tile), min(ymax, y0 + tile)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        if (cx1 - cx0) * (cy1 - cy0) < 0.5 * (xmax - xmin) * (ymax - ymin):
            continue
        cx, cy, w, h = ((cx0 + cx1) / 2 - x0) / tile, ((cy0 + cy1) / 2 - y0) / tile, (cx1 - cx0) / tile, (cy1 - cy0) / tile
        lines.append(f"0 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def write_split(out: Path, split: str, image, boxes, origins, tile: int, fmt: str) -> int:
    (out / split / "images").mkdir(parents=True, exist_ok=True)
    (out / split / "labels").mkdir(parents=True, exist_ok=True)
    objects = 0
    for i, (x0, y0) in enumerate(origins):
        name = f"{i:04d}"
        crop = image.crop((x0, y0, x0 + tile, y0 + tile))
        if fmt == "jpg":
            crop.save(out / split / "images" / f"{name}.jpg", quality=90)
        else:
            crop.save(out / split / "images" / f"{name}.png", optimize=True)
        lines = tile_labels(boxes, x0, y0, tile)
        objects += len(lines)
        (out / split / "labels" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    return objects


def grid(width: int, height: int, tile: int, stride: int):
    return [(x, y) for y in range(0, height - tile + 1, stride) for x in range(0, width - tile + 1, stride)]


def yaml(path: str, train, val) -> str:
    def entry(v):
        return "[" + ", ".join(v) + "]" if isinstance(v, list) else v
    return f"path: {path}\ntrain: {entry(train)}\nval: {entry(val)}\nnc: 1\nnames: [{', '.join(NAMES)}]\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path, help="deepforest-2.1.0-py3-none-any.whl")
    ap.add_argument("out", type=Path, help="output directory (created; must not exist)")
    ap.add_argument("--tile", type=int, default=320, help="tile side in pixels (default 320)")
    ap.add_argument("--downscale", type=float, default=1.0, help="shrink both photos by this factor first")
    ap.add_argument("--edges", type=int, default=2, help="private shards (default 2)")
    ap.add_argument("--format", choices=["png", "jpg"], default="png", help="tile format (default png)")
    args = ap.parse_args()
    out, t = args.out, args.tile
    out.mkdir(parents=True)
    counts = {}
    with zipfile.ZipFile(args.wheel) as wheel:
        public, public_boxes = read_site(wheel, PUBLIC, args.downscale)
        band = public.height - t
        train = grid(public.width, band, t, t // 2)
        val = [(x, band) for x in range(0, public.width - t + 1, t)]
        counts["public/train"] = (len(train), write_split(out, "public/train", public, public_boxes, train, t, args.format))
        counts["public/val"] = (len(val), write_split(out, "public/val", public, public_boxes, val, t, args.format))

        private, private_boxes = read_site(wheel, PRIVATE, args.downscale)
        tiles = grid(private.width, private.height, t, t)
        rows = private.height // t
        held_out = [o for o in tiles if o[1] >= (rows - 2) * t]
        dealt = [o for o in tiles if o[1] < (rows - 2) * t]
        counts["private/val"] = (len(held_out), write_split(out, "private/val", private, private_boxes, held_out, t, args.format))
        for k in range(args.edges):
            shard = dealt[k :: args.edges]
            counts[f"private/edge-{k}"] = (len(shard), write_split(out, f"private/edge-{k}", private, private_boxes, shard, t, args.format))
    (out / "private").mkdir(exist_ok=True)
    # Relative `path`s (resolved against each YAML's directory), so the directory can move.
    (out / "public.yaml").write_text(yaml("public", "train/images", "val/images"))
    (out / "private-val.yaml").write_text(yaml("private/val", "images", "images"))
    edges = [f"edge-{k}/images" for k in range(args.edges)]
    (out / "private.yaml").write_text(yaml("private", edges, "val/images"))
    for k in range(args.edges):
        (out / "private" / f"edge-{k}.yaml").write_text(yaml(f"edge-{k}", "images", "../val/images"))
    table = "".join(f"| {split} | {n} | {objects} |\n" for split, (n, objects) in counts.items())
    (out / "README.md").write_text(
        "# NEON aerial tree crowns (deepforest 2.1.0, MIT)\n\n"
        f"Made by `tools/make_deepforest.py --tile {t} --downscale {args.downscale} --edges {args.edges} --format {args.format}` "
        "from the two 2019_YELL crops in the deepforest wheel (public: the 541000_4977000 site; private: the "
        "528000_4978000 site). Class 0: Tree.\n\n| split | tiles | trees |\n|---|---|---|\n" + table
    )
    print(table, end="")


if __name__ == "__main__":
    main()
