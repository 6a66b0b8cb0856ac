import os
from pathlib import Path

from PIL import Image

from clipsearch.indexing.scan import FileEntry, compare, walk_images
from clipsearch.store import StoredFile


def make_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def names(entries) -> set[str]:
    return {os.path.basename(e.path) for e in entries}


def test_walk_finds_images_and_skips_junk(tmp_path):
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "sub" / "deeper" / "B.JPEG")
    make_image(tmp_path / "sub" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    make_image(tmp_path / ".hidden.jpg")
    make_image(tmp_path / "._a.jpg")  # macOS resource fork
    make_image(tmp_path / ".git" / "x.jpg")
    make_image(tmp_path / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_XL.jpg")  # Synology thumbnails
    make_image(tmp_path / "node_modules" / "pkg" / "logo.png")
    make_image(tmp_path / "Catalog.lrdata" / "preview.jpg")

    found = list(walk_images([tmp_path]))
    assert names(found) == {"a.jpg", "B.JPEG", "c.png"}
    assert all(os.path.isabs(e.path) for e in found)
    assert all(e.size > 0 and e.mtime_ns > 0 for e in found)


def test_exclude_patterns_add_to_the_defaults(tmp_path):
    make_image(tmp_path / "keep.jpg")
    make_image(tmp_path / "Screenshots" / "s1.png")
    make_image(tmp_path / "exports" / "big" / "e1.jpg")
    make_image(tmp_path / "draft-1.jpg")
    make_image(tmp_path / "@eaDir" / "t.jpg")

    found = walk_images([tmp_path], exclude=["Screenshots", "*/exports/*", "draft-*"])
    assert names(found) == {"keep.jpg"}


def test_symlinked_folders_followed_only_when_asked_and_without_loops(tmp_path):
    make_image(tmp_path / "real" / "x.jpg")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")

    assert [os.path.relpath(e.path, tmp_path) for e in walk_images([tmp_path])] == ["real/x.jpg"]
    followed = [os.path.relpath(e.path, tmp_path) for e in walk_images([tmp_path], follow_symlinks=True)]
    assert followed == ["real/x.jpg"], "the same folder reached twice is walked once"


def test_unlistable_folder_is_reported(tmp_path):
    errors = []
    list(walk_images([tmp_path / "missing"], on_error=lambda path, reason: errors.append((path, reason))))
    assert errors and "cannot list folder" in errors[0][1]


def test_compare_classifies_changes():
    indexed = {
        "/p/same.jpg": StoredFile(1, 100, 5),
        "/p/touched.jpg": StoredFile(2, 100, 5),
        "/p/deleted.jpg": StoredFile(3, 100, 5),
    }
    failed = {"/p/broken.jpg": (10, 1, "corrupt image"), "/p/fixed.jpg": (10, 1, "corrupt image")}
    scanned = [
        FileEntry("/p/same.jpg", 100, 5),
        FileEntry("/p/touched.jpg", 100, 6),
        FileEntry("/p/new.jpg", 50, 1),
        FileEntry("/p/broken.jpg", 10, 1),
        FileEntry("/p/fixed.jpg", 20, 2),
    ]
    changes = compare(scanned, indexed, failed)
    assert [e.path for e in changes.to_index] == ["/p/touched.jpg", "/p/new.jpg", "/p/fixed.jpg"]
    assert changes.unchanged == 1
    assert changes.known_bad == [("/p/broken.jpg", "corrupt image")]
    assert changes.gone == ["/p/deleted.jpg"]
    assert changes.seen == 5
