"""Makes the photographs in this directory from images bundled in four PyPI wheels.

    pip download scikit-image scikit-learn matplotlib deepforest --no-deps -d wheels
    for w in wheels/*.whl; do unzip -o -q "$w" 'skimage/data/*' 'sklearn/datasets/images/*' \
        'matplotlib/mpl-data/sample_data/*' 'deepforest/data/*' -d src; done
    python3 make_photos.py src

Every image is RGB and square: a region of a photo (the whole photo, a half, or one cell of a
grid), centre-cropped to a square and resized with Lanczos. `heldout/` (160x160) are the images the
privacy evaluation attacks and re-identifies (never used to train an attack); `aux/` are the
attacker's auxiliary photos (random crops of them train the inversion decoder). The deepforest
`2019_YELL_*` crops are left to the detection benchmark, except a downscaled copy of the smaller
one in `aux/`, as public aerial imagery an attacker could hold.
"""
import sys
from pathlib import Path

from PIL import Image

HELDOUT_SIZE = 160
AUX_SIZE = 192

SKIMAGE = "skimage/data/"
SKLEARN = "sklearn/datasets/images/"
DEEPFOREST = "deepforest/data/"


def grid(path: str, name: str, cols: int, rows: int) -> list:
    """One (output name, source, region) per cell of a cols x rows grid over the photo."""
    return [(f"{name}-{r * cols + c}", path, (cols, rows, c, r)) for r in range(rows) for c in range(cols)]


# (output name, source file, region as (cols, rows, col, row) of a grid over the photo).
HELDOUT = (
    [(n, SKIMAGE + f, (1, 1, 0, 0)) for n, f in
     [("astronaut", "astronaut.png"), ("chelsea", "chelsea.png"), ("coffee", "coffee.png"), ("rocket", "rocket.jpg")]]
    + [("grace_hopper", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", (1, 1, 0, 0))]
    + grid(SKLEARN + "china.jpg", "china", 2, 1)
    + grid(SKLEARN + "flower.jpg", "flower", 2, 1)
    + grid(DEEPFOREST + "OSBS_029.png", "osbs029", 2, 2)
    + grid(DEEPFOREST + "SOAP_031.png", "soap031", 2, 2)
    + grid(DEEPFOREST + "SOAP_061.png", "soap061", 2, 2)
    + grid(DEEPFOREST + "AWPE Pigeon Lake 2020 DJI_0005.JPG", "awpe", 4, 3)
)
AUX = [(Path(f).stem, SKIMAGE + f, (1, 1, 0, 0), AUX_SIZE) for f in
       ["camera.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "coins.png", "brick.png", "grass.png",
        "gravel.png"]] + [("yell_541000", DEEPFOREST + "2019_YELL_2_541000_4977000_image_crop.png", (1, 1, 0, 0), 384)]


def square(src: Path, region: tuple, size: int) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = None
    img = Image.open(src).convert("RGB")
    cols, rows, c, r = region
    w, h = img.size
    cell = img.crop((c * w // cols, r * h // rows, (c + 1) * w // cols, (r + 1) * h // rows))
    w, h = cell.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return cell.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def main(root: Path) -> None:
    here = Path(__file__).parent
    for folder, items in (("heldout", [(n, f, g, HELDOUT_SIZE) for n, f, g in HELDOUT]), ("aux", AUX)):
        (here / folder).mkdir(exist_ok=True)
        for old in (here / folder).glob("*.png"):
            old.unlink()
        for name, src, region, size in items:
            square(root / src, region, size).save(here / folder / f"{name}.png", optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
