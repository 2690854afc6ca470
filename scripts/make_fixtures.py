#!/usr/bin/env python3
"""Writes the data set and preprocessing fixtures under tests/fixtures/ (committed; rerun only to
change them). Deterministic: fixed seeds, no timestamps in the outputs that tests look at.

    .venv/bin/python scripts/make_fixtures.py

- tests/fixtures/cub/CUB_200_2011/: the official CUB-200-2011 layout (images.txt,
  image_class_labels.txt, train_test_split.txt, classes.txt, images/<class>/<file>.jpg) with
  3 classes x 4 tiny JPEGs.
- tests/fixtures/dogs/: the official Stanford Dogs layout (Images/<wnid>-<breed>/<file>.jpg)
  with 3 breeds x 5 tiny JPEGs, and the lists written by scipy's savemat in the official
  structure (file_list and annotation_list as N x 1 cell arrays of char rows, labels as an N x 1
  double column, 1-based): lists/{train,test,file}_list.mat compressed (MATLAB's default) and
  uncompressed/{train,test}_list.mat without compression.
- tests/fixtures/folder/: a folder per class (3 classes, JPEG and PNG).
- tests/fixtures/preprocess/: JPEGs with an EXIF orientation tag, a progressive and a CMYK JPEG, a 16-bit grey PNG
  and an RGBA PNG, for the decoder tests.

Needs numpy, scipy (in .venv) and Pillow (installed into .venv by this script if missing).
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

try:
    import PIL  # noqa: F401
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "pillow"])

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.io import savemat  # noqa: E402

RNG = np.random.RandomState(20261128)


def tiny_jpeg(path, colour, size=(32, 24)):
    """A small JPEG: a class colour plus noise, so images differ and decode to known means."""
    w, h = size
    base = np.array(colour, dtype=np.float64)[None, None, :]
    noise = RNG.randint(-20, 21, size=(h, w, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(pixels, "RGB")
    if path.endswith(".png"):
        img.save(path, optimize=False)
    else:
        img.save(path, quality=90)


COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def make_cub():
    root = os.path.join(FIX, "cub", "CUB_200_2011")
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    stems = ["Black_Footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    images, labels, split = [], [], []
    image_id = 0
    for c, (cls, stem) in enumerate(zip(classes, stems)):
        for k in range(4):
            image_id += 1
            rel = f"{cls}/{stem}_{k + 1:04d}_{796000 + image_id}.jpg"
            tiny_jpeg(os.path.join(root, "images", rel), COLOURS[c])
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            # Like the real file: train and test interleaved within a class.
            split.append(f"{image_id} {1 if k % 2 == 0 else 0}")
    write_lines(os.path.join(root, "images.txt"), images)
    write_lines(os.path.join(root, "image_class_labels.txt"), labels)
    write_lines(os.path.join(root, "train_test_split.txt"), split)
    write_lines(os.path.join(root, "classes.txt"), [f"{i + 1} {c}" for i, c in enumerate(classes)])


def write_lines(path, lines):
    with open(path, "w", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


def cell_column(strings):
    """An N x 1 cell array of char rows, as in the official lists."""
    cells = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cells[i, 0] = s
    return cells


def dogs_list(entries):
    files = [f for f, _ in entries]
    return {
        "file_list": cell_column(files),
        "annotation_list": cell_column([f[: -len(".jpg")] for f in files]),
        "labels": np.array([[float(label)] for _, label in entries], dtype=np.float64),
    }


def make_dogs():
    root = os.path.join(FIX, "dogs")
    breeds = [("n02085620", "Chihuahua"), ("n02085782", "Japanese_spaniel"), ("n02086240", "Shih-Tzu")]
    train, test = [], []
    for c, (wnid, breed) in enumerate(breeds):
        for k in range(5):
            rel = f"{wnid}-{breed}/{wnid}_{1000 + 7 * k + c}.jpg"
            tiny_jpeg(os.path.join(root, "Images", rel), COLOURS[c], size=(30, 26))
            (train if k < 3 else test).append((rel, c + 1))
    lists = os.path.join(root, "lists")
    uncompressed = os.path.join(root, "uncompressed")
    os.makedirs(lists, exist_ok=True)
    os.makedirs(uncompressed, exist_ok=True)
    for name, entries in [("train_list", train), ("test_list", test), ("file_list", train + test)]:
        savemat(os.path.join(lists, name + ".mat"), dogs_list(entries), do_compression=True)
    for name, entries in [("train_list", train), ("test_list", test)]:
        savemat(os.path.join(uncompressed, name + ".mat"), dogs_list(entries), do_compression=False)


def make_folder():
    root = os.path.join(FIX, "folder")
    for c, cls in enumerate(["apples", "bananas", "cherries"]):
        for k in range(5):
            ext = "png" if k % 2 else "jpg"
            tiny_jpeg(os.path.join(root, cls, f"{cls}_{k}.{ext}"), COLOURS[c], size=(20, 20))


def make_preprocess():
    root = os.path.join(FIX, "preprocess")
    os.makedirs(root, exist_ok=True)
    # Stored 40 wide x 20 high: left half red, right half blue. Orientation 6 means "rotate 90
    # degrees clockwise to display": the displayed image is 20 wide x 40 high, red on top.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored, "RGB").save(os.path.join(root, f"orientation{orientation}.jpg"), quality=95, exif=exif)
    # The same pixels without a tag.
    Image.fromarray(stored, "RGB").save(os.path.join(root, "orientation1.jpg"), quality=95)
    # A progressive JPEG (several scans with tables between them).
    Image.fromarray(stored, "RGB").save(os.path.join(root, "progressive.jpg"), quality=90, progressive=True)
    # CMYK JPEG of a uniform orange-ish colour.
    Image.new("CMYK", (16, 12), (0, 128, 255, 0)).save(os.path.join(root, "cmyk.jpg"), quality=95)
    # 16-bit grey PNG: a horizontal ramp.
    ramp = np.tile(np.linspace(0, 65535, 24).astype(np.uint16), (10, 1))
    Image.fromarray(ramp).save(os.path.join(root, "grey16.png"))
    # RGBA PNG, half transparent.
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 1] = 180
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(os.path.join(root, "rgba.png"))


if __name__ == "__main__":
    make_cub()
    make_dogs()
    make_folder()
    make_preprocess()
    print("fixtures written under", FIX)
