"""Only ``deit/images.py`` turns a file into pixels (ARCHITECTURE.md, "Where each rule lives"):
every other module opens images through it, so EXIF orientation and the mode policy hold
everywhere. Read from the source (AST), as tests/test_imports.py reads the imports."""

from __future__ import annotations

import ast
from pathlib import Path

import deit

PACKAGE = Path(deit.__file__).parent
# Module-level functions of image libraries that decode a file or encoded bytes into pixels.
DECODERS = {
    ("Image", "open"), ("PIL.Image", "open"), ("cv2", "imread"), ("imageio", "imread"), ("iio", "imread"),
    ("simplejpeg", "decode_jpeg"), ("torchvision.io", "decode_image"), ("torchvision.io", "decode_jpeg"),
    ("torchvision.io", "read_image"), ("io", "decode_image"), ("io", "decode_jpeg"),
}


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = dotted(node.value)
        return None if owner is None else f"{owner}.{node.attr}"
    return None


def image_decodes(path: Path, root: Path = PACKAGE) -> list[str]:
    """``file:line call`` of every decoder call in the module, and every decoder imported by name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = dotted(node.func.value)
            if owner is not None and (owner, node.func.attr) in DECODERS:
                found.append(f"{path.relative_to(root)}:{node.lineno} {owner}.{node.func.attr}")
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (node.module, alias.name) in DECODERS or (node.module.rsplit(".", 1)[-1], alias.name) in DECODERS:
                    found.append(f"{path.relative_to(root)}:{node.lineno} from {node.module} import {alias.name}")
    return found


def test_the_scan_finds_the_ways_of_opening_an_image(tmp_path):
    module = tmp_path / "opens.py"
    module.write_text("import PIL.Image\nfrom PIL import Image\nfrom simplejpeg import decode_jpeg\n"
                      "a = Image.open('x.jpg')\nb = PIL.Image.open('x.jpg')\n")
    hits = sorted(image_decodes(module, root=tmp_path))
    assert hits == ["opens.py:3 from simplejpeg import decode_jpeg", "opens.py:4 Image.open", "opens.py:5 PIL.Image.open"]


def test_only_the_image_module_opens_images():
    images = PACKAGE / "images.py"
    assert image_decodes(images), "deit/images.py should open images (the scan no longer sees how)"
    elsewhere = [hit for path in sorted(PACKAGE.rglob("*.py")) if path != images for hit in image_decodes(path)]
    assert elsewhere == [], "open images through deit.images (open_rgb, open_image, read_image): " + "; ".join(elsewhere)
