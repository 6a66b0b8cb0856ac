"""A model's first run: its encoders prepared in child processes, one tower and one step at a time.

Exporting both towers in the index process took 2.4 GB for ViT-B/32 (torch, the
model, the exporter's copies of the weights and the quantiser's all at once), and
left torch loaded for the rest of the run. Here each step runs in a child that
exits when it is done, which returns all of its memory:

    fetch     load the model once, which downloads a Hub model's weights
    torch     load the model and write one tower's raw graph and reference vectors (1.0 GB)
    quantise  fold and quantise that graph, without torch (1.2 GB: onnxruntime's quantiser copies the model twice)
    check     check the graphs against the reference vectors and time them, without torch

The index process itself never imports torch. Each child reports its notices and
its outcome as JSON lines on stdout:

    python -m clipsearch.models.prepare fetch|torch|quantise|check image|text MODEL [WORK]
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import export_cache, onnx_text
from .torch_encoder import ModelError

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
STEP_WORDS = {"torch": "exporting", "quantise": "quantising", "check": "checking"}


def prepare(tower: str, model_id: str, work: Path, notify: Callable[[str], None]) -> dict[str, Any]:
    """Export `tower` of `model_id` into `work`, one step per child process; returns its settings."""
    for name in ("torch", "quantise", "check"):
        run_step(name, tower, model_id, work, notify)
    return dict(json.loads((work / "settings.json").read_text()))


def run_step(name: str, tower: str, model_id: str, work: Path | None, notify: Callable[[str], None]) -> None:
    """Run one step in a child process, passing its notices to `notify`, and raise what it raised: ModelError,
    the tower's ...Unavailable, or export_cache.ExportFailed for anything else (which the caller records)."""
    if name in STEP_WORDS:
        timing = " and timing" if name == "check" and tower == "image" else ""
        notify(f"Preparing the {tower} encoder (once): {STEP_WORDS[name]}{timing}...")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
    outcome: dict[str, str] = {}
    with tempfile.TemporaryFile("w+") as errors:
        command = [sys.executable, "-m", "clipsearch.models.prepare", name, tower, model_id, str(work or "")]
        child = subprocess.Popen(command,
                                 stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, text=True, env=env)
        assert child.stdout is not None
        for line in child.stdout:
            message = _message(line)
            if "notice" in message:
                notify(f"Preparing the {tower} encoder (once): {message['notice']}")
            elif "error" in message:
                outcome = message
        code = child.wait()
        errors.seek(0)
        last_error_line = (errors.read().strip().splitlines() or [""])[-1]
    if code == 0:
        return
    # Ctrl-C reaches the child too. It may die of it, or (inside torch's export) exit 1 with KeyboardInterrupt as
    # its last word: either way the person stopped it, and it must not be recorded as a failed export, which
    # would keep the next runs on torch.
    if code in (-signal.SIGINT, 128 + signal.SIGINT) or last_error_line.startswith("KeyboardInterrupt"):
        raise KeyboardInterrupt
    if not outcome:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise export_cache.ExportFailed(f"the {name} step {how} ({last_error_line or 'no message'})")
    kind, text = outcome["error"], outcome["message"]
    if kind == "ModelError":
        raise ModelError(text)
    if kind.endswith("Unavailable"):
        raise _unavailable(tower)(text)
    raise export_cache.ExportFailed(f"{kind}: {text}")


def _message(line: str) -> dict[str, str]:
    """A JSON line of ours, or {} for anything else a library printed on stdout."""
    if not line.startswith('{"clipsearch"'):
        return {}
    try:
        return dict(json.loads(line))
    except ValueError:
        return {}


def _unavailable(tower: str) -> type[Exception]:
    from .onnx_image import ImageEncoderUnavailable

    return ImageEncoderUnavailable if tower == "image" else onnx_text.TextEncoderUnavailable


def step(name: str, tower: str, model_id: str, work: Path | None, notify: Callable[[str], None]) -> None:
    """Do one step in this process (the child's work; tests may call it directly)."""
    from . import onnx_image

    if name == "quantise":
        assert work is not None
        export_cache.fold_and_quantise(work, tower)
        return
    if name == "check":
        assert work is not None
        settings = onnx_image.check(work, model_id) if tower == "image" else onnx_text.check(work, model_id)
        export_cache.write_json_atomically(work / "settings.json", settings)
        return
    from .torch_encoder import Encoder

    model = Encoder.load(model_id, "cpu")  # also downloads a Hub model's weights
    if name == "torch":
        assert work is not None
        if tower == "image":
            onnx_image.write_torch_half(model, work)
        else:
            onnx_text.write_torch_half(model, work)


def main(argv: list[str] | None = None) -> int:
    name, tower, model_id, work = (argv if argv is not None else sys.argv[1:])[:4]

    def say(**fields: str) -> None:
        print(json.dumps({"clipsearch": 1, **fields}), flush=True)

    # The exporter and the quantiser talk through warnings and the root logger; only our lines go to stdout.
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    try:
        step(name, tower, model_id, Path(work) if work else None, lambda text: say(notice=text))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        say(error=type(exc).__name__, message=str(exc))
        return 1
    return 0



def text_tower_too(model_id: str, notify: Callable[[str], None]) -> None:
    """After the image tower, the text tower of the same model, unless it is prepared already: `find` then
    needs no torch either. A failure is a notice (find falls back to torch), not an error."""
    text_folder = onnx_text.export_dir(model_id)
    if text_folder is None or (text_folder / "settings.json").exists():
        return
    try:
        export_cache.export_into_cache(text_folder, model_id, lambda work: prepare("text", model_id, work, notify),
                                       onnx_text.TextEncoderUnavailable)
    except onnx_text.TextEncoderUnavailable as exc:
        notify(f"The text encoder could not be prepared ({exc}); find will use torch.")


if __name__ == "__main__":
    sys.exit(main())
