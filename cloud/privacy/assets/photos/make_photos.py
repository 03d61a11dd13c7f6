"""Makes the photographs in this directory from scikit-image's bundled data.

    pip download scikit-image --no-deps && unzip scikit_image-*.whl 'skimage/data/*'
    python3 make_photos.py skimage/data

Each photo is converted to RGB, resized so its short side is SIZE pixels (Lanczos) and centre-cropped
to SIZE x SIZE. `heldout/` are the images the privacy evaluation attacks (never used to train an
attack); `aux/` are the attacker's auxiliary photos (random crops of them train the inversion decoder).
"""
import sys
from pathlib import Path

from PIL import Image

HELDOUT = {"astronaut.png": 128, "coffee.png": 128, "chelsea.png": 128, "rocket.jpg": 128}
AUX = {name: 192 for name in ["camera.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "coins.png",
                               "brick.png", "grass.png", "gravel.png"]}


def square(src: Path, size: int) -> Image.Image:
    img = Image.open(src).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.LANCZOS)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def main(data: Path) -> None:
    here = Path(__file__).parent
    for folder, names in (("heldout", HELDOUT), ("aux", AUX)):
        (here / folder).mkdir(exist_ok=True)
        for name, size in names.items():
            square(data / name, size).save(here / folder / (Path(name).stem + ".png"), optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
