"""XMP sidecars: the tags as `dc:subject` keywords beside the photos, for photo managers.

digiKam and darktable look for `IMG_0001.jpg.xmp`, Lightroom (and Capture One)
for `IMG_0001.xmp`; `style` picks the name. The photo itself is never opened
for writing. An existing sidecar is read and merged with exiv2 (through
pyexiv2): its other properties and keywords stay; our tags are added to its
keyword list (an rdf:Bag, as the XMP spec has dc:subject), not written over
it. Two photos that would share a Lightroom sidecar (IMG.jpg, IMG.png) get
none. A sidecar that is a symlink is never followed (it could point anywhere,
outside the library): it is skipped with a reason. Every sidecar is written to a fresh temporary file, then renamed over
the old one. exiv2 only works on the bytes in memory: Python does the file
work, with the exact bytes of the name (os.fsencode), so a photo whose name is
not valid UTF-8 gets its sidecar too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from ..options import SidecarStyle

SUBJECT = "Xmp.dc.subject"
EMPTY_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
    '  <rdf:Description rdf:about=""/>\n'
    " </rdf:RDF>\n"
    "</x:xmpmeta>\n"
    '<?xpacket end="w"?>\n'
)


class SidecarError(Exception):
    """This sidecar cannot be written safely; the message is the reason (reported per file, never raised out)."""


@dataclass
class ExportReport:
    written: int = 0  # sidecars created
    merged: int = 0  # existing sidecars that got new keywords
    unchanged: int = 0  # sidecars that had every keyword already
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sidecar, reason)


def sidecar_path(image: str, style: SidecarStyle) -> str:
    if style is SidecarStyle.lightroom:
        return os.path.splitext(image)[0] + ".xmp"
    return image + ".xmp"


def _keywords(xmp) -> list[str]:
    value = xmp.read_xmp().get(SUBJECT, [])
    return [value] if isinstance(value, str) else list(value)


def _bag(keywords: list[str]) -> dict[str, str]:
    """dc:subject as the XMP spec has it, an unordered rdf:Bag, in pyexiv2's terms.

    pyexiv2 writes a Python list as an rdf:Seq, so the array is made empty with
    exiv2's "type=Bag" and filled item by item. exiv2 reads a "type=X " prefix
    off any item; an empty one (`type="" `) guards a keyword that starts with "type=".
    """
    items = {SUBJECT: "type=Bag"}
    for number, keyword in enumerate(keywords, 1):
        items[f"{SUBJECT}[{number}]"] = f'type="" {keyword}' if keyword.startswith("type=") else keyword
    return items


def _read_sidecar(name: bytes) -> bytes:
    """The sidecar's bytes, never through a symlink (one swapped in after the check included)."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if os.path.islink(name):
            raise SidecarError("is a symlink; not followed (replace it with a plain file to export to it)") from None
        raise SidecarError(f"cannot read it: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def read_keywords(sidecar: str) -> list[str]:
    import pyexiv2

    with pyexiv2.ImageData(_read_sidecar(os.fsencode(sidecar))) as xmp:
        return _keywords(xmp)


def write_keywords(sidecar: str, keywords: list[str]) -> str:
    """Add `keywords` to the sidecar's dc:subject (creating the sidecar if needed).

    Returns "written", "merged" or "unchanged".
    """
    import pyexiv2

    name = os.fsencode(sidecar)  # the exact bytes, also of a name that is not valid UTF-8
    if os.path.islink(name):
        raise SidecarError("is a symlink; not followed (replace it with a plain file to export to it)")
    created = not os.path.lexists(name)
    before = EMPTY_PACKET.encode("utf-8") if created else _read_sidecar(name)
    with pyexiv2.ImageData(before) as xmp:
        existing = _keywords(xmp)
        merged = existing + [k for k in keywords if k not in existing]
        if merged == existing and not created:
            return "unchanged"
        # exiv2 mirrors a sidecar's XMP as IPTC when it reads it and copies that back over the XMP when it
        # writes: the old dc:subject would come back and clash with the new Bag. The XMP holds it all.
        xmp.clear_iptc()
        xmp.modify_xmp(_bag(merged))
        after = xmp.get_bytes()
    mode = 0o666 if created else stat.S_IMODE(os.lstat(name).st_mode)  # a new file: as umask allows
    partial = name + f".{os.getpid()}.tmp".encode()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never through something already there
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(after)
        if not created:
            os.chmod(partial, mode)  # the old sidecar's permissions, whatever the umask
        os.replace(partial, name)
    finally:
        if os.path.lexists(partial):
            os.unlink(partial)
    return "written" if created else "merged"


def export_sidecars(tags_by_path: dict[str, list[str]], style: SidecarStyle = SidecarStyle.digikam) -> ExportReport:
    """Write or merge one sidecar per image.

    Lightroom names a sidecar by the file's stem, so IMG.jpg and IMG.png would
    share IMG.xmp and each get the other's tags: such a sidecar is not written
    (nor changed), and is reported as failed, naming the images.
    """
    report = ExportReport()
    images_of: dict[str, list[str]] = {}
    for image, keywords in sorted(tags_by_path.items()):
        if keywords:
            images_of.setdefault(sidecar_path(image, style), []).append(image)
    for sidecar, images in sorted(images_of.items()):
        if len(images) > 1:
            names = ", ".join(os.fsencode(os.path.basename(image)).decode("utf-8", "backslashreplace")
                              for image in images)
            report.failed.append((sidecar, f"{names} would share it and mix their tags; not written. Export with "
                                           "--sidecar digikam to give each photo its own (IMG.jpg.xmp)"))
            continue
        keywords = tags_by_path[images[0]]
        try:
            outcome = write_keywords(sidecar, keywords)
        except SidecarError as exc:
            report.failed.append((sidecar, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001  (exiv2 raises RuntimeError with its own message)
            report.failed.append((sidecar, f"{exc} (left as it was)"))
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    return report
