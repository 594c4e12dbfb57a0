"""Writes the small image fixtures the COCO reader tests decode (committed; re-run to refresh).

Pillow makes the files our own encoder cannot: a JPEG with an EXIF orientation tag and a CMYK
JPEG. Each has a red marker in the stored image's top-left corner so tests can check where it
lands after orientation is applied.
"""
import sys
from pathlib import Path

from PIL import Image

out = Path(sys.argv[1] if len(sys.argv) > 1 else "dataset/tests/fixtures")
out.mkdir(parents=True, exist_ok=True)


def marked(mode="RGB", size=(24, 16)):
    im = Image.new("RGB", size, (40, 90, 200))
    for y in range(4):
        for x in range(4):
            im.putpixel((x, y), (255, 0, 0))
    return im.convert(mode) if mode != "RGB" else im


# Orientation 6: the viewer rotates the stored image 90 degrees clockwise.
exif = Image.Exif()
exif[0x0112] = 6
marked().save(out / "exif_rot90.jpg", quality=95, exif=exif.tobytes())
marked("CMYK").save(out / "cmyk.jpg", quality=95)
marked("L").save(out / "grey.jpg", quality=95)
print("wrote fixtures to", out)
