"""Reading the text in a picture: PP-OCR detection and recognition, run on onnxruntime.

The models are the ones the rapidocr wheel bundles (small PP-OCR detection and
recognition, Latin and CJK); they are opened from the installed package by file
name, never through rapidocr's model resolver, which may download other models
from the internet. rapidocr's own pre- and post-processing (DB boxes, CTC
decoding, rotated crops) is used as is.

Cost is what matters on a CPU, and most photos hold no text. So detection
runs once, on a small copy of the picture (`DETECT_SIDE` pixels on its long
side, decoded with Pillow's draft mode: a 12 MP JPEG is never decoded whole);
a photo in which it finds no text box costs that and nothing more. Recognition
reads just the boxes found, cut from that copy, or, when some line is too low
there to read well (`READ_HEIGHT`), from a sharper one decoded at up to
`READ_SIDE` pixels. Text must be
about 1/65 of the picture's long side high to be found reliably (24 px in a
1600 px photo, 62 px in a 12 MP one; scripts/eval_ocr.py): a larger
`DETECT_SIDE` finds smaller text, at about the square of the cost.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInputError

if TYPE_CHECKING:
    from PIL import Image

DETECTION_MODEL = "PP-OCRv6_det_small.onnx"
RECOGNITION_MODEL = "PP-OCRv6_rec_small.onnx"
DETECT_SIDE = 512  # long side of the copy text is looked for in: the main cost, and the smallest text found
# The copy decoded for detection has at least this short side: a 12 MP photo (4032x3024) decodes at 1/8 of
# its size (504x378), which the detector stretches a little to DETECT_SIDE.
DETECT_SHORT_SIDE = DETECT_SIDE * 23 // 32
READ_HEIGHT = 32  # text lines lower than this (in pixels of the copy text was found in)...
READ_SIDE = 2048  # ...are read from a sharper copy of the picture, at most this long
MIN_CONFIDENCE = 0.5  # recognised lines below this are dropped (rapidocr's default text_score)
# ...and so are lines of a single letter or digit: on photos they are mostly round things read as O or 0.
MIN_CHARACTERS = 2
_REC_HEIGHT = 48
_REC_BATCH = 8
# Part of the version the index records per photo: a change here means photos are read again.
_PIPELINE = f"detect{DETECT_SIDE}/read{READ_HEIGHT}@{READ_SIDE}/min{MIN_CONFIDENCE},{MIN_CHARACTERS}"


class OcrUnavailableError(BadInputError):
    """rapidocr, onnxruntime or the bundled models cannot be loaded; the message says which and how to fix it."""


@dataclass(frozen=True)
class Line:
    """One line of recognised text: what it says, how sure the model is (0..1), and where it is, as four
    corners (x, y) in fractions of the picture's width and height (top-left first, clockwise)."""

    text: str
    confidence: float
    box: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "confidence": round(self.confidence, 4),
                "box": [[round(x, 4), round(y, 4)] for x, y in self.box]}


def model_folder() -> Path:
    """The folder of the models bundled in the installed rapidocr wheel (OcrUnavailableError if absent)."""
    try:
        import rapidocr
    except ImportError as exc:
        raise OcrUnavailableError(f"Text recognition needs the rapidocr package ({exc}). Install it: "
                                  "pipx inject clipsearch rapidocr") from None
    folder = Path(rapidocr.__file__).resolve().parent / "models"
    missing = [name for name in (DETECTION_MODEL, RECOGNITION_MODEL) if not (folder / name).is_file()]
    if missing:
        raise OcrUnavailableError(f"The installed rapidocr lacks its bundled models ({', '.join(missing)} in "
                                  f"{folder}). Reinstall it: pipx inject clipsearch --force rapidocr")
    return folder


def model_version() -> str:
    """Names the models and the pipeline's settings: a photo is read once per version."""
    folder = model_folder()
    digest = hashlib.sha256()
    for name in (DETECTION_MODEL, RECOGNITION_MODEL):
        stat = (folder / name).stat()
        digest.update(f"{name}:{stat.st_size};".encode())
    return f"ppocr-small-{digest.hexdigest()[:10]}/{_PIPELINE}"


class Reader:
    """The detection and recognition models, loaded once; `read` may be called from several threads at once
    (onnxruntime sessions are thread-safe), each call using `threads` cores inside onnxruntime."""

    def __init__(self, threads: int = 1):
        folder = model_folder()
        try:
            import onnxruntime
            from rapidocr.ch_ppocr_det.utils import DBPostProcess
            from rapidocr.ch_ppocr_rec.utils import CTCLabelDecode
        except ImportError as exc:
            raise OcrUnavailableError(f"Text recognition cannot start: {exc}. Reinstall clipsearch's "
                                      "dependencies (pipx reinstall clipsearch).") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._detector = onnxruntime.InferenceSession(str(folder / DETECTION_MODEL), options,
                                                          providers=["CPUExecutionProvider"])
            self._recogniser = onnxruntime.InferenceSession(str(folder / RECOGNITION_MODEL), options,
                                                            providers=["CPUExecutionProvider"])
            characters = self._recogniser.get_modelmeta().custom_metadata_map["character"].splitlines()
        except Exception as exc:  # noqa: BLE001  (a damaged model file: say which, whatever onnxruntime raised)
            raise OcrUnavailableError(f"Cannot load the text recognition models in {folder}: {exc}") from None
        self._boxes = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6,
                                    use_dilation=True, score_mode="fast")
        self._decode = CTCLabelDecode(character=characters)
        self._lock = threading.Lock()  # DBPostProcess and CTCLabelDecode are cheap but keep no per-call state

    # -- detection -----------------------------------------------------------

    def _probabilities(self, image: np.ndarray, side: int) -> np.ndarray:
        """The detector's text probability map of `image` (RGB, HxWx3) scaled to at most `side` pixels."""
        import cv2

        height, width = image.shape[:2]
        scale = min(1.0, side / max(height, width))
        size = (max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size != (width, height) else image
        # The models were trained on BGR pixels normalised to -1..1.
        batch = (resized[:, :, ::-1].astype(np.float32) * (2 / 255) - 1).transpose(2, 0, 1)[None]
        return self._detector.run(None, {self._detector.get_inputs()[0].name: batch})[0]

    def detect(self, image: np.ndarray, into: tuple[int, int] | None = None) -> np.ndarray:
        """Text boxes in `image` (looked for at DETECT_SIDE pixels), four corners each, in the pixels of a
        copy of it `into` (height, width) in size, default its own: an (N, 4, 2) float32 array."""
        probabilities = self._probabilities(image, DETECT_SIDE)
        boxes, _ = self._boxes(probabilities, into or image.shape[:2])
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4, 2)

    # -- recognition ---------------------------------------------------------

    def recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """What each crop (RGB, one line of text) says, and the model's confidence."""
        import cv2

        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        order = sorted(range(len(crops)), key=lambda i: crops[i].shape[1] / max(1, crops[i].shape[0]))
        for start in range(0, len(order), _REC_BATCH):
            chunk = order[start:start + _REC_BATCH]
            ratios = [crops[i].shape[1] / max(1, crops[i].shape[0]) for i in chunk]
            width = max(_REC_HEIGHT * 320 // 48, math.ceil(_REC_HEIGHT * max(ratios)))
            batch = np.zeros((len(chunk), 3, _REC_HEIGHT, width), dtype=np.float32)
            for row, i in enumerate(chunk):
                line_width = min(width, max(1, math.ceil(_REC_HEIGHT * ratios[row])))
                resized = cv2.resize(crops[i], (line_width, _REC_HEIGHT))
                batch[row, :, :, :line_width] = (resized[:, :, ::-1].astype(np.float32) * (2 / 255) - 1
                                                 ).transpose(2, 0, 1)
            output = self._recogniser.run(None, {self._recogniser.get_inputs()[0].name: batch})[0]
            with self._lock:
                decoded, _ = self._decode(output)
            for i, (text, confidence) in zip(chunk, decoded):
                results[i] = (text, float(confidence))
        return results

    # -- a whole picture -----------------------------------------------------

    def read_pixels(self, small: np.ndarray, big: np.ndarray | None = None) -> list[Line]:
        """The lines of text in a picture: looked for in `small` and read from `big`, the same picture with
        more pixels (default: `small` itself). Both RGB, HxWx3 uint8."""
        return self._read(small, lambda: small if big is None else big)

    def _read(self, small: np.ndarray, big: Callable[[], np.ndarray]) -> list[Line]:
        from rapidocr.utils.process_img import get_rotate_crop_image

        probabilities = self._probabilities(small, DETECT_SIDE)
        boxes = np.asarray(self._boxes(probabilities, small.shape[:2])[0], dtype=np.float32).reshape(-1, 4, 2)
        if not len(boxes):  # the common case, and the cheap one: nothing like text
            return []
        height, width = small.shape[:2]
        source, scale = small, 1.0
        if _line_heights(boxes).min() < READ_HEIGHT:  # small text: cut it from a sharper copy
            source = big()
            scale = source.shape[1] / width
        crops = [get_rotate_crop_image(source, box * scale) for box in boxes]
        lines = []
        for box, (text, confidence) in zip(boxes, self.recognise(crops)):
            text = " ".join(text.split())
            if confidence >= MIN_CONFIDENCE and sum(char.isalnum() for char in text) >= MIN_CHARACTERS:
                corners = tuple((float(x) / width, float(y) / height) for x, y in box)
                lines.append(Line(text, confidence, corners))
        return lines

    def read_image(self, image: Image.Image) -> list[Line]:
        """The lines of text in an upright RGB picture."""
        return self._read(np.asarray(_fit(image, DETECT_SIDE * 2)), lambda: np.asarray(_fit(image, READ_SIDE)))

    def read_file(self, path: str | os.PathLike, max_megapixels: float | None = None) -> list[Line]:
        """The lines of text in the picture in a file, decoded at no more pixels than needed (ImageError
        from indexing.images when it cannot be read)."""
        from ..indexing import images
        from ..options import DEFAULT_MAX_MEGAPIXELS

        limit = DEFAULT_MAX_MEGAPIXELS if max_megapixels is None else max_megapixels
        path = os.fspath(path)
        data, orientation = images.read_bytes(path), None
        if images.is_raw(path):
            data, orientation, _ = images.raw_preview(data)
        # A copy just big enough to look for text in (a 12 MP JPEG decodes at 1/8 of its size)...
        small, _ = images.open_oriented(data, DETECT_SHORT_SIDE, limit, orientation)
        # ...and, only when there is text, a sharper one to read it from.
        return self._read(np.asarray(_fit(small, DETECT_SIDE * 2)), lambda: np.asarray(_fit(
            images.open_oriented(data, READ_SIDE * 3 // 4, limit, orientation)[0], READ_SIDE)))


def _line_heights(boxes: np.ndarray) -> np.ndarray:
    """The height of each box (the shorter of its sides), in pixels."""
    sides = np.linalg.norm(boxes - np.roll(boxes, -1, axis=1), axis=2)
    return np.minimum(sides[:, 0], sides[:, 1])


def _fit(image: Image.Image, side: int) -> Image.Image:
    """`image` with its long side at most `side` pixels."""
    from PIL import Image as PILImage

    if max(image.size) <= side:
        return image
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        PILImage.Resampling.BILINEAR, reducing_gap=2.0)
