import io

import numpy as np
import pytest
from PIL import Image

from clipsearch.indexing import images
from clipsearch_dev import scenes

PREP = images.Preprocess(shortest_edge=64, crop_height=64, crop_width=64)


def jpeg_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **save_args)
    return buffer.getvalue()


def half_red_image(width=400, height=200) -> Image.Image:
    """Left half red, right half blue: orientation mistakes are easy to see."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def test_exif_orientation_is_applied():
    upright = half_red_image(400, 200)
    # A camera held sideways stores the pixels rotated and an orientation tag (6 = rotate 90 CW to view).
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 200x400, pixels sideways
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg_bytes(stored, exif=exif)

    decoded = images.decode(data, images.Preprocess(100, 100, 200))
    assert (decoded.width, decoded.height) == (400, 200)  # displayed size, not stored size
    left, right = decoded.pixels[:, :60].mean(axis=(0, 1)), decoded.pixels[:, -60:].mean(axis=(0, 1))
    assert left[0] > 200 and left[2] < 60, "left half should be red once upright"
    assert right[2] > 200 and right[0] < 60


def test_large_jpeg_is_decoded_in_draft_mode_to_the_model_size():
    big = Image.new("RGB", (4000, 3000), (10, 200, 30))
    data = jpeg_bytes(big)
    drafted, displayed = images.open_oriented(data, min_short_side=64)
    assert displayed == (4000, 3000)
    assert min(drafted.size) >= 64
    assert drafted.size[0] <= 4000 // 8 + 1, "JPEG should be decoded at 1/8 scale"
    decoded = images.decode(data, PREP)
    assert decoded.pixels.shape == (64, 64, 3)
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert abs(int(decoded.pixels[..., 1].mean()) - 200) < 8


def test_transparency_becomes_white_not_black():
    image = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pixels = images.decode(buffer.getvalue(), PREP).pixels
    assert pixels.min() > 240


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"])
def test_common_formats_decode(fmt, tmp_path):
    if fmt == "HEIF" and images.pillow_heif is None:
        pytest.skip("pillow-heif not installed")
    image = half_red_image(128, 96)
    path = tmp_path / f"picture.{fmt.lower()}"
    image.save(path, format=fmt)
    decoded = images.decode_file(path, PREP)
    assert decoded.pixels.shape == (64, 64, 3)
    assert (decoded.width, decoded.height) == (128, 96)
    assert path.suffix in images.supported_extensions()


def test_16_bit_greyscale_png(tmp_path):
    array = (np.linspace(0, 65535, 100 * 100).reshape(100, 100)).astype(np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(array).save(path)
    decoded = images.decode_file(path, PREP)
    assert decoded.pixels.max() > 200 and decoded.pixels.min() < 50


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is a text file, not a photo", "not an image"),
        ("truncated", "truncated"),
        ("garbage-after-header", "corrupt image|not an image"),  # wording varies with Pillow's version
    ],
)
def test_bad_files_raise_image_error_with_a_reason(tmp_path, content, reason):
    good = jpeg_bytes(half_red_image(300, 200))
    if content == "truncated":
        content = good[: len(good) // 2]
    elif content == "garbage-after-header":
        content = good[:200] + bytes(range(256)) * 20
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(images.ImageError, match=reason):
        images.decode_file(path, PREP)


def test_missing_and_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(images.ImageError, match="vanished"):
        images.read_bytes(str(tmp_path / "gone.jpg"))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # Root (as CI runs) can read any file, so the OS error is simulated here.
    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(images.ImageError, match="permission denied"):
        images.read_bytes(str(tmp_path / "locked.jpg"))


def test_pixel_limit_guards_against_huge_images():
    data = jpeg_bytes(Image.new("RGB", (3000, 2000)))
    with pytest.raises(images.ImageError, match=r"too large .*--max-megapixels"):
        images.decode(data, PREP, max_megapixels=5)
    assert images.decode(data, PREP, max_megapixels=7).pixels.shape == (64, 64, 3)


def test_raw_file_is_read_through_its_embedded_preview(tmp_path):
    picture = scenes.draw(scenes.random_scene(__import__("random").Random(2), 640, 480))
    raw = tmp_path / "IMG_0001.NEF"
    raw.write_bytes(scenes.fake_raw(picture))
    decoded = images.decode_file(raw, images.Preprocess())
    assert (decoded.width, decoded.height) == (640, 480)
    assert ".nef" in images.supported_extensions()

    no_preview = tmp_path / "IMG_0002.CR2"
    no_preview.write_bytes(b"II*\x00" + bytes(4096))
    with pytest.raises(images.ImageError, match="embedded JPEG preview"):
        images.decode_file(no_preview, images.Preprocess())


def _one_file_per_writable_format(folder):
    """A small picture in every still-image format clipsearch indexes that Pillow can also write."""
    picture = scenes.draw(scenes.random_scene(__import__("random").Random(5), 96))
    registered = Image.registered_extensions()
    folder.mkdir(parents=True, exist_ok=True)
    written, formats = {}, set()
    for extension in sorted(images.supported_extensions() - images.RAW_EXTENSIONS):
        fmt = registered.get(extension)
        if fmt not in Image.SAVE or fmt in formats:
            continue
        path = folder / f"picture-{fmt.lower()}{extension}"
        for mode in ("RGB", "L", "1", "P", "F"):
            try:
                picture.convert(mode).save(path, format=fmt)
                break
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)
        if path.exists():
            written[fmt] = path
            formats.add(fmt)
    return written


def test_formats_come_from_pillows_registry():
    extensions = images.supported_extensions()
    assert {".jp2", ".j2k", ".qoi", ".psd", ".heic", ".avif", ".jpg", ".png", ".webp", ".tif"} <= extensions
    unwanted = {".mpg", ".fli", ".eps", ".wmf", ".pdf", ".h5", ".ico", ".heics"}
    assert not unwanted & extensions, "no video, vector or data"


def test_every_format_indexes_one_file(tmp_path, encoder):
    from clipsearch.indexing.job import index_folders
    from clipsearch.store import Store

    written = _one_file_per_writable_format(tmp_path / "formats")
    assert {"JPEG", "JPEG2000", "PNG", "WEBP", "TIFF", "BMP", "GIF", "HEIF", "AVIF", "QOI", "TGA"} <= set(written)
    with Store.open(tmp_path / "index.db") as store:
        report = index_folders([tmp_path / "formats"], store, encoder=encoder)
        assert report.skipped == [], report.skipped
        assert sorted(store.paths()) == sorted(str(p) for p in written.values())
