"""Terminal previews: the escape sequences byte for byte, protocol detection, thumbnails and the notice."""

from __future__ import annotations

import base64
import io
import os
import re

import numpy as np
from PIL import Image

from clipsearch.cli import preview
from clipsearch.cli.preview import Protocol
from clipsearch.indexing import thumbnails
from clipsearch.search import Hit
from clipsearch_dev import scenes


def test_kitty_sequence_byte_for_byte():
    assert preview.kitty_sequence(b"abc", 3) == "\x1b_Ga=T,f=100,q=2,r=3,m=0;YWJj\x1b\\"
    data = bytes(range(256)) * 24  # 6144 bytes: 8192 base64 characters, exactly two chunks
    encoded = base64.standard_b64encode(data).decode()
    assert preview.kitty_sequence(data, 5) == (
        "\x1b_Ga=T,f=100,q=2,r=5,m=1;" + encoded[:4096] + "\x1b\\" + "\x1b_Gm=0;" + encoded[4096:] + "\x1b\\")


def test_iterm_sequence_byte_for_byte():
    assert preview.iterm_sequence(b"abc", 4) == (
        "\x1b]1337;File=inline=1;size=3;height=4;preserveAspectRatio=1:YWJj\x07")


def test_sixel_sequence_byte_for_byte():
    red = Image.new("RGB", (2, 6), (255, 0, 0))
    assert preview.sixel_sequence(red) == '\x1bPq"1;1;2;6#0;2;100;0;0#0~~-\x1b\\'


def test_detect_reads_the_terminal_from_its_environment():
    def never():
        return False  # the terminal would not answer that it has sixel
    assert preview.detect({"TERM": "xterm-kitty"}, never) is Protocol.kitty
    assert preview.detect({"TERM": "xterm-ghostty"}, never) is Protocol.kitty
    assert preview.detect({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, never) is Protocol.kitty
    assert preview.detect({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, never) is Protocol.iterm
    assert preview.detect({"TERM": "xterm-256color", "LC_TERMINAL": "iTerm2"}, never) is Protocol.iterm
    assert preview.detect({"TERM": "foot"}, lambda: True) is Protocol.sixel
    assert preview.detect({"TERM": "xterm-256color"}, never) is Protocol.none
    assert preview.detect({"TERM": "dumb"}, lambda: True) is Protocol.none
    # Inside tmux, kitty's variables are inherited but tmux does not pass kitty graphics through.
    assert preview.detect({"TERM": "tmux-256color", "TMUX": "/tmp/t", "KITTY_WINDOW_ID": "1"}, never) is Protocol.none
    assert preview.detect({"TERM": "xterm", "CLIPSEARCH_PREVIEW": "iterm"}, never) is Protocol.iterm
    assert preview.detect({"TERM": "xterm-kitty", "CLIPSEARCH_PREVIEW": "none"}, never) is Protocol.none


def test_device_attributes_answer_says_whether_sixel_is_there():
    assert preview.parse_device_attributes(b"\x1b[?62;4;6;22c")
    assert preview.parse_device_attributes(b"\x1b[?64;1;2;4;6;9;15;18;21;22c")
    assert not preview.parse_device_attributes(b"\x1b[?62;6;22c")
    assert not preview.parse_device_attributes(b"\x1b[?1;2c")
    assert not preview.parse_device_attributes(b"")


def test_thumbnails_are_upright_small_and_cached(tmp_path):
    photo = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated to portrait
    Image.new("RGB", (400, 200), (0, 0, 255)).save(photo, exif=exif)
    data, key = thumbnails.thumbnail(str(photo), 100)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (50, 100)
    cached = thumbnails.cache_dir() / key[:2] / f"{key}.jpg"
    assert cached.read_bytes() == data
    assert str(cached).startswith(os.environ["XDG_CACHE_HOME"])
    os.utime(photo, ns=(0, 10**18))  # a changed file gets a new thumbnail
    assert thumbnails.thumbnail(str(photo), 100)[1] != key


def test_previews_show_each_hit_as_a_kitty_image_beside_its_score(tmp_path):
    path = tmp_path / "red-circle.jpg"
    scenes.draw(scenes.Scene("red", "circle", "grey", 320, 240, 0.5, 0.5, 0.3, 0.0, 1)).save(path)
    written: list[str] = []
    preview.show_previews([Hit(str(path), 0.3125, 320, 240, 1000), Hit(str(tmp_path / "gone.jpg"), 0.25)],
                          Protocol.kitty, 3, written.append, columns=400)
    first, second = written
    *commands, text = first.split("\x1b\\")
    controls = [command.split(";", 1)[0] for command in commands]
    assert controls == ["\x1b_Ga=T,f=100,q=2,r=3,m=1"] + ["\x1b_Gm=1"] * (len(commands) - 2) + ["\x1b_Gm=0"]
    payload = "".join(command.split(";", 1)[1] for command in commands)
    shown = Image.open(io.BytesIO(base64.b64decode(payload)))
    assert shown.format == "PNG" and shown.size == (120, 90)
    red, green, blue = shown.getpixel((60, 45))
    assert red > 200 and green < 80 and blue < 80, "the centre of the picture is the red circle"
    assert text == f"   1  0.312  320x240  {path}\n"
    assert second.startswith("[no preview: ") and "gone.jpg" in second and "\x1b" not in second


def test_preview_in_a_plain_terminal_prints_a_notice_and_the_normal_list(cli, scene_index):
    result = cli("find", "a red circle", "--preview", "--top", "3", "--db", scene_index,
                 env={"TERM": "xterm-256color"})
    assert result.exit_code == 0
    assert "Previews need a terminal that shows images" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()  # the normal list (as lines: the test's stdout is not a terminal)
    assert len(lines) == 3 and all("red-circle" in line.split("\t")[1] for line in lines)


def test_a_raw_file_gets_a_thumbnail_from_its_embedded_preview(tmp_path):
    # raw_preview returns (jpeg, orientation, metadata); render unpacked two and failed on every RAW.
    picture = scenes.draw(scenes.random_scene(__import__("random").Random(4), 640, 480))
    raw = tmp_path / "IMG_0001.NEF"
    raw.write_bytes(scenes.fake_raw(picture))
    data, _ = thumbnails.thumbnail(str(raw), 100)
    assert Image.open(io.BytesIO(data)).size == (100, 75)


def decode_sixel(sequence: str) -> tuple[np.ndarray, dict[int, tuple[int, int, int]]]:
    """A small sixel decoder: the colour register painted at each pixel (-1: none) and the registers (RGB %).

    It checks the structure as it goes: DCS q introducer and ST, raster attributes first, every register
    defined before it is selected, no pixel painted twice.
    """
    assert sequence.startswith("\x1bPq") and sequence.endswith("\x1b\\")
    body = sequence[3:-2]
    raster = re.match(r'"1;1;(\d+);(\d+)', body)
    assert raster, "raster attributes come first"
    width, height = int(raster.group(1)), int(raster.group(2))
    painted = np.full((height, width), -1)
    registers: dict[int, tuple[int, int, int]] = {}
    colour, x, top = None, 0, 0
    tokens = re.finditer(r"#(\d+);2;(\d+);(\d+);(\d+)|#(\d+)|!(\d+)([?-~])|([?-~])|(\$)|(-)|(.)", body[raster.end():])
    for token in tokens:
        define, select_, count, repeated, single, carriage, newline, other = (
            token.group(1), token.group(5), token.group(6), token.group(7), token.group(8), token.group(9),
            token.group(10), token.group(11))
        assert other is None, f"unexpected {other!r} in the sixel data"
        if define is not None:
            rgb = tuple(int(token.group(i)) for i in (2, 3, 4))
            assert all(0 <= c <= 100 for c in rgb)
            registers[int(define)] = rgb  # type: ignore[assignment]
        elif select_ is not None:
            colour = int(select_)
            assert colour in registers, f"register {colour} used before it is defined"
        elif carriage:
            x = 0
        elif newline:
            x, top = 0, top + 6
        else:
            char, times = (repeated, int(count)) if repeated else (single, 1)
            bits = ord(char) - 63
            for row in (r for r in range(6) if bits >> r & 1):
                assert top + row < height and x + times <= width, "painted outside the raster"
                assert (painted[top + row, x:x + times] == -1).all(), "a pixel painted twice"
                painted[top + row, x:x + times] = colour
            x += times
    return painted, registers


def test_sixel_of_a_many_coloured_picture_decodes_to_that_picture(tmp_path):
    # `3 * index` on a uint8 palette index wrapped around for index >= 86: only one-colour images worked.
    ramp = np.linspace(0, 255, 120).round().astype(np.uint8)
    pixels = np.zeros((45, 120, 3), np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = np.linspace(0, 255, 45).round().astype(np.uint8)[:, None]
    pixels[..., 2] = 255 - ramp[None, :]
    picture = Image.fromarray(pixels)
    assert len(picture.getcolors(1 << 16)) > 200
    painted, registers = decode_sixel(preview.sixel_sequence(picture))
    assert painted.shape == (45, 120) and (painted >= 0).all(), "every pixel painted once"
    assert len(registers) > 200, "the palette keeps the many colours"
    shown = np.array([[registers[int(i)] for i in row] for row in painted]) * 255 / 100
    assert np.abs(shown - pixels).max() < 24, "each pixel shows (nearly) its own colour"
    assert np.abs(shown - pixels).mean() < 6

    photo = tmp_path / "gradient.jpg"  # and through a thumbnail of a real file, as `find --preview` does
    picture.resize((400, 150)).save(photo, quality=95)
    written: list[str] = []
    preview.show_previews([Hit(str(photo), 0.5, 400, 150, 1000)], Protocol.sixel, 2, written.append, columns=400)
    sequence, text = written[0].rsplit("\x1b\\", 1)
    painted, registers = decode_sixel(sequence + "\x1b\\")
    assert painted.shape == (15, 40) and (painted >= 0).all() and len(registers) > 30
    assert text == f"   1  0.500  400x150  {photo}\n"
