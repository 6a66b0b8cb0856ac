"""find's text worker (models/text_worker.py): a forked process embeds the new texts; it answers what the
encoder would, leaves no process behind, never loses a query, and the command's output is unchanged.

The worker is forked in fresh Python processes, as the command line does at its start, never inside pytest's
own (threads, torch): that is what it is built for."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch.models.onnx_text import OnnxTextEncoder
from clipsearch.models.query import QueryEncoder
from clipsearch.models.text_worker import TextWorker
from clipsearch.store import Store

from .conftest import REPO, TINY_MODEL

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker is forked on Linux only"),
              pytest.mark.usefixtures("exported_text_encoder")]
TEXTS = ["a red circle", "two blue squares on grass"]


def run_python(script: str) -> dict:
    """Run `script` in a new Python process (the worker forked first, as main does); its last line is JSON."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan's, once its parent has gone, waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_worker_answers_what_the_encoder_gives_and_is_reaped():
    answer = run_python(f"""
        import json, os
        from clipsearch.models.text_worker import TextWorker
        worker = TextWorker.start()
        pid = worker.pid
        import numpy as np
        from clipsearch.models.onnx_text import OnnxTextEncoder
        assert worker.ask({TINY_MODEL!r}, "auto", {TEXTS!r})
        assert not worker.ask({TINY_MODEL!r}, "auto", ["asked once only"])
        vectors = worker.answer({TEXTS!r})
        worker.stop(wait=True)
        expected = OnnxTextEncoder.load({TINY_MODEL!r}, "auto").embed_texts({TEXTS!r})
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        print(json.dumps({{"shape": list(vectors.shape), "dtype": str(vectors.dtype), "alive": alive,
                           "difference": float(np.abs(vectors - expected).max())}}))
    """)
    assert answer["shape"] == [2, 64] and answer["dtype"] == "float32"  # the tiny model: 64 dimensions
    assert answer["difference"] < 1e-6  # the same graph and tokenizer: the same vectors
    assert not answer["alive"]


def test_a_model_without_an_export_gets_no_answer_and_the_caller_loads_it_itself(tmp_path):
    copy = tmp_path / "tiny-copy"
    shutil.copytree(TINY_MODEL, copy)  # another model id: not exported
    answer = run_python(f"""
        import json
        from clipsearch.models.text_worker import TextWorker
        worker = TextWorker.start()
        pid = worker.pid
        worker.ask({str(copy)!r}, "auto", ["a red circle"])
        print(json.dumps({{"answer": worker.answer(["a red circle"]), "pid": pid}}))
    """)
    assert answer["answer"] is None
    deadline = time.monotonic() + 10
    while not gone(answer["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(answer["pid"])


def test_a_worker_whose_caller_is_killed_ends_by_itself():
    script = textwrap.dedent("""
        import os, signal
        from clipsearch.models.text_worker import TextWorker
        worker = TextWorker.start()
        print(worker.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 before it is asked anything
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == -signal.SIGKILL
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 20
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid), "the worker outlived its caller"


def test_a_query_asks_the_worker_for_new_texts_only_and_remembers_them(store):
    model_id = store.model()[0]
    QueryEncoder(store, model_id).embed_texts(["a red circle"])  # remembered from now on
    answer = run_python(f"""
        import json
        from clipsearch.models.text_worker import TextWorker
        remembered_only, new_too = TextWorker.start(), TextWorker.start()
        from clipsearch.models.query import QueryEncoder
        from clipsearch.store import Store
        with Store.open({str(store.path)!r}) as store:
            first = QueryEncoder(store, {model_id!r}, worker=remembered_only)
            first.start_loading(["a red circle"])  # nothing to embed: stopped, not asked
            second = QueryEncoder(store, {model_id!r}, worker=new_too)
            second.start_loading(["a red circle", "a yellow hexagon"])
            asked = new_too.asked
            vectors = second.embed_texts(["a red circle", "a yellow hexagon"])
            print(json.dumps({{"first_asked": remembered_only.asked, "first_worker": first.worker is None,
                               "asked": asked, "loaded_here": second.models.text is not None,
                               "vectors": vectors.tolist()}}))
    """)
    assert answer["first_asked"] is None and answer["first_worker"]
    assert answer["asked"] == ["a yellow hexagon"]
    assert not answer["loaded_here"], "the worker's answer was not used: the encoder was loaded in the caller"
    with Store.open(store.path) as again:
        expected = QueryEncoder(again, model_id).embed_texts(["a red circle", "a yellow hexagon"])
        assert "a yellow hexagon" in again.remembered_queries(model_id, "auto", ["a yellow hexagon"])
    assert np.allclose(np.array(answer["vectors"]), expected, atol=1e-6)
    assert np.allclose(expected[1], OnnxTextEncoder.load(model_id).embed_texts(["a yellow hexagon"])[0], atol=1e-6)


def test_find_with_the_worker_lists_what_the_library_finds_and_leaves_no_process(scene_index, tmp_path):
    """The console script forks the worker; a subreaper catches any process it would leave behind."""
    db = tmp_path / "index.db"
    shutil.copy(scene_index, db)
    script = textwrap.dedent(f"""
        import ctypes, json, os, subprocess, sys
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
        command = [{str(Path(sys.executable).with_name("clipsearch"))!r}, "find", "--db", {str(db)!r}, "--json"]
        runs = [subprocess.run([*command, text], capture_output=True, text=True)
                for text in ("a yellow hexagon", "a yellow hexagon", "a photo of a red circle")]
        left = []
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            left.append(pid)
        print(json.dumps({{"codes": [r.returncode for r in runs], "errors": [r.stderr for r in runs],
                           "outputs": [r.stdout for r in runs], "left": left}}))
    """)
    if not Path(sys.executable).with_name("clipsearch").exists():
        pytest.skip("the console script is not installed beside this Python")
    answer = run_python(script)
    assert answer["codes"] == [0, 0, 0], answer["errors"]
    assert answer["left"] == []
    from clipsearch import Library

    with Library(db) as library:
        for text, output in zip(("a yellow hexagon", "a photo of a red circle"), answer["outputs"][1:]):
            found = [hit["path"] for hit in json.loads(output)]
            assert found == [hit.path for hit in library.find(text)]
        assert answer["outputs"][0] == answer["outputs"][1]  # embedded by the worker, then remembered


def test_stop_before_an_answer_ends_the_worker_at_once():
    answer = run_python("""
        import json, os, time
        from clipsearch.models.text_worker import TextWorker
        worker = TextWorker.start()
        pid = worker.pid
        started = time.monotonic()
        worker.stop(wait=True)
        seconds = time.monotonic() - started
        worker.stop(wait=True)  # again: nothing left to do
        print(json.dumps({"pid": pid, "seconds": seconds, "answer": worker.answer(["x"])}))
    """)
    assert answer["seconds"] < 5 and answer["answer"] is None
    assert gone(answer["pid"])


def test_the_worker_is_not_forked_where_the_platform_is_not_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert TextWorker.start() is None  # the query loads its encoder in a thread instead


def test_a_worker_that_does_not_answer_is_given_up_on_and_ended():
    answer = run_python(f"""
        import json, os, signal, time
        from clipsearch.models import text_worker
        from clipsearch.models.text_worker import TextWorker
        worker = TextWorker.start()
        pid = worker.pid
        os.kill(pid, signal.SIGSTOP)  # stuck: it will never answer
        text_worker.ANSWER_TIMEOUT = 0.5
        worker.ask({TINY_MODEL!r}, "auto", ["a red circle"])
        started = time.monotonic()
        vectors = worker.answer(["a red circle"])
        waited = time.monotonic() - started
        worker.stop(wait=True)
        print(json.dumps({{"answer": vectors, "waited": waited, "pid": pid}}))
    """)
    assert answer["answer"] is None and 0.4 < answer["waited"] < 10
    assert gone(answer["pid"])
