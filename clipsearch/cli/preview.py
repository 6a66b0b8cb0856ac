"""Thumbnails in the terminal for `find --preview` and `similar --preview`.

Photo search is visual, and most modern terminals can show pictures: the kitty
graphics protocol (kitty, WezTerm, Ghostty), iTerm2's inline images (iTerm2),
and sixel (foot, xterm -ti vt340, Windows Terminal, mlterm, Konsole...). Which
one a terminal speaks is read from its environment, or, for sixel, asked of the
terminal itself (its Primary Device Attributes answer lists 4 for sixel).
Anything else gets one line saying so and the normal list: never garbage.
`CLIPSEARCH_PREVIEW=kitty|iterm|sixel|none` overrides the guess (tmux, ssh).

Like output.py this module is presentation: it writes to the terminal.
"""

from __future__ import annotations

import base64
import io
import math
import os
import select
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import Enum

from PIL import Image

from .. import Hit, Library
from ..errors import BadInputError

PREVIEW_ENV = "CLIPSEARCH_PREVIEW"
CELL_HEIGHT_PX = 20  # a typical terminal cell; sixel images are not scaled by the terminal
KITTY_CHUNK = 4096  # the graphics protocol's largest payload per escape sequence

NOTICE = ("Previews need a terminal that shows images (kitty, WezTerm, Ghostty, iTerm2, or one with sixel "
          f"such as foot or Windows Terminal); showing the list only. Set {PREVIEW_ENV}=kitty|iterm|sixel to "
          "force one.")


class Protocol(str, Enum):
    kitty = "kitty"
    iterm = "iterm"
    sixel = "sixel"
    none = "none"


def detect(environ: Mapping[str, str] = os.environ, ask_terminal: Callable[[], bool] | None = None) -> Protocol:
    """The image protocol this terminal speaks, from its environment (and, for sixel, from asking it)."""
    forced = environ.get(PREVIEW_ENV, "").strip().lower()
    if forced:
        return Protocol(forced) if forced in Protocol.__members__ else Protocol.none
    term, program = environ.get("TERM", ""), environ.get("TERM_PROGRAM", "")
    # Inside tmux or screen these variables are inherited from the outer terminal, which does not see our output.
    multiplexed = "TMUX" in environ or term.startswith(("screen", "tmux"))
    if not multiplexed:
        kitty_like = term in ("xterm-kitty", "xterm-ghostty") or program in ("WezTerm", "ghostty")
        if kitty_like or "KITTY_WINDOW_ID" in environ:
            return Protocol.kitty
        if program == "iTerm.app" or environ.get("LC_TERMINAL") == "iTerm2":
            return Protocol.iterm
    if term in ("", "dumb"):
        return Protocol.none
    if (ask_terminal or terminal_has_sixel)():
        return Protocol.sixel
    return Protocol.none


def terminal_has_sixel(timeout: float = 0.2) -> bool:
    """Ask the terminal for its Primary Device Attributes; a 4 among them means sixel graphics."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    try:
        import termios
        import tty
    except ImportError:  # pragma: no cover - Windows
        return False
    fd = sys.stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        return False
    answer = b""
    try:
        tty.setraw(fd)
        os.write(sys.stdout.fileno(), b"\x1b[c")
        while not answer.endswith(b"c") and select.select([fd], [], [], timeout)[0]:
            answer += os.read(fd, 64)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return parse_device_attributes(answer)


def parse_device_attributes(answer: bytes) -> bool:
    """True when a DA1 answer (ESC [ ? 62 ; 4 ; ... c) lists sixel (4)."""
    text = answer.decode("ascii", "replace")
    start = text.find("\x1b[?")
    if start < 0 or not text.endswith("c"):
        return False
    return "4" in text[start + 3:-1].split(";")


def kitty_sequence(png: bytes, rows: int) -> str:
    """Show a PNG `rows` cells high at the cursor (kitty graphics protocol, chunked, replies suppressed)."""
    payload = base64.standard_b64encode(png).decode("ascii")
    chunks = [payload[i:i + KITTY_CHUNK] for i in range(0, len(payload), KITTY_CHUNK)] or [""]
    parts = []
    for number, chunk in enumerate(chunks):
        more = int(number < len(chunks) - 1)
        control = f"a=T,f=100,q=2,r={rows},m={more}" if number == 0 else f"m={more}"
        parts.append(f"\x1b_G{control};{chunk}\x1b\\")
    return "".join(parts)


def iterm_sequence(data: bytes, rows: int) -> str:
    """Show an image file's bytes `rows` cells high (iTerm2 inline images, OSC 1337)."""
    payload = base64.standard_b64encode(data).decode("ascii")
    return f"\x1b]1337;File=inline=1;size={len(data)};height={rows};preserveAspectRatio=1:{payload}\x07"


def sixel_sequence(image: Image.Image) -> str:
    """Encode an RGB image as sixel: a 256-colour palette, six pixel rows per band, runs compressed."""
    import numpy as np

    paletted = image.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    palette = paletted.getpalette() or []
    pixels = np.asarray(paletted)
    height, width = pixels.shape
    out = [f"\x1bPq\"1;1;{width};{height}"]
    for index in (int(i) for i in np.unique(pixels)):  # int: 3 * a uint8 index would wrap around past 85
        r, g, b = (round(c * 100 / 255) for c in palette[3 * index:3 * index + 3])
        out.append(f"#{index};2;{r};{g};{b}")
    weights = (1 << np.arange(6)).reshape(6, 1)
    for top in range(0, height, 6):
        band = pixels[top:top + 6]
        band_weights = weights[:len(band)]
        first = True
        for index in (int(i) for i in np.unique(band)):
            bits = ((band == index) * band_weights).sum(axis=0)
            if not first:
                out.append("$")  # back to the start of the band for the next colour
            first = False
            out.append(f"#{index}" + _sixel_runs(bits))
        out.append("-")  # next band
    out.append("\x1b\\")
    return "".join(out)


def _sixel_runs(bits) -> str:
    text, i, width = [], 0, len(bits)
    while i < width:
        j = i
        while j < width and bits[j] == bits[i]:
            j += 1
        char = chr(63 + int(bits[i]))
        text.append(f"!{j - i}{char}" if j - i > 3 else char * (j - i))
        i = j
    return "".join(text)


def image_sequence(path: str, protocol: Protocol, rows: int) -> str:
    """The escape sequence showing `path`'s thumbnail, `rows` cells high (cached: `Library.thumbnail`)."""
    if protocol is Protocol.sixel:
        data = Library.thumbnail(path, rows * CELL_HEIGHT_PX)
        return sixel_sequence(Image.open(io.BytesIO(data)))
    data = Library.thumbnail(path, rows * CELL_HEIGHT_PX * 2)  # twice the pixels: sharp on HiDPI screens
    if protocol is Protocol.iterm:
        return iterm_sequence(data, rows)
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    return kitty_sequence(png.getvalue(), rows)


def show_previews(hits: Sequence[Hit], protocol: Protocol, rows: int, write: Callable[[str], object],
                  columns: int = 80) -> None:
    """Each hit as a thumbnail with its rank, score, size and path beside it, the path shortened in its
    folders to what is left of `columns` beside the picture (about two columns per row of a 4:3 photo)."""
    from .output import relative_path, shorten_path, shown

    for rank, hit in enumerate(hits, 1):
        try:
            picture = image_sequence(hit.path, protocol, rows)
        except BadInputError as exc:
            picture = f"[no preview: {exc}]"
        dims = f"{hit.width}x{hit.height}" if hit.width else ""
        caption = f"  {rank:>2}  {hit.score:.3f}  {dims}  "
        aspect = (hit.width or 4) / (hit.height or 3)
        picture_columns = math.ceil(rows * 2.2 * aspect) if picture[:1] == "\x1b" else 0  # cells are ~2:1
        room = max(12, columns - picture_columns - len(caption))
        path = shorten_path(shown(relative_path(hit.path)), room)  # shown(): a file name cannot send escapes
        write(f"{picture}{caption}{path}\n")
