import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from clipsearch.store import SCHEMA_VERSION, Store
from clipsearch_dev import scenes

from .conftest import REPO, TINY_MODEL


def test_index_find_similar_end_to_end(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    result = cli("index", small_library, "--db", db, "--model", TINY_MODEL)
    assert result.exit_code == 0, result.output
    assert "12 new" in result.stderr

    red_circles = sorted(str(p) for p in small_library.glob("*-red-circle.jpg"))
    some_file = sorted(small_library.glob("*.jpg"))[0]

    piped = cli("find", "a red circle", "--db", db, "--top", "3")  # CliRunner's stdout is not a terminal
    assert piped.exit_code == 0
    scores_and_paths = [line.split("\t") for line in piped.stdout.splitlines()]
    assert len(scores_and_paths) == 3 and all(os.path.isfile(path) for _, path in scores_and_paths)
    scores = [float(score) for score, _ in scores_and_paths]
    assert scores == sorted(scores, reverse=True)

    paths = cli("find", "a", "red", "circle", "--db", db, "--top", "3", "--paths")
    assert paths.exit_code == 0
    lines = paths.stdout.splitlines()
    assert len(lines) == 3 and all(os.path.isfile(line) for line in lines)
    if red_circles:
        assert lines[0] in red_circles

    as_json = cli("find", "a blue square", "+", "2:a star", "--db", db, "--top", "4", "--json")
    results = json.loads(as_json.stdout)
    assert len(results) == 4 and {"path", "score"} <= set(results[0])

    similar = cli("similar", some_file, "--db", db, "--json", "--top", "11")
    listed = [r["path"] for r in json.loads(similar.stdout)]
    assert len(listed) == 11 and str(some_file) not in listed

    info = cli("info", "--db", db, "--json")
    assert json.loads(info.stdout)["images"] == 12


def test_environment_chooses_the_index_and_the_model(cli, small_library, tmp_path):
    env = {"CLIPSEARCH_DB": str(tmp_path / "env.db"), "CLIPSEARCH_MODEL": TINY_MODEL}
    assert cli("index", small_library, env=env).exit_code == 0
    assert (tmp_path / "env.db").exists()
    assert cli("find", "a star", "--paths", env=env).exit_code == 0


def test_default_index_lives_in_xdg_data_home(cli, small_library):
    assert cli("index", small_library, "--model", TINY_MODEL).exit_code == 0
    expected = os.path.join(os.environ["XDG_DATA_HOME"], "clipsearch", "index.db")
    assert os.path.exists(expected)
    # Queries use the model the index was built with, without being told again.
    assert cli("find", "a star", "--paths").exit_code == 0


def test_exit_codes_and_messages(cli, small_library, tmp_path):
    db = tmp_path / "index.db"

    missing = cli("find", "cats", "--db", tmp_path / "none.db")
    assert missing.exit_code == 1 and "No index at" in missing.stderr

    no_folder = cli("index", tmp_path / "unplugged", "--db", db, "--model", TINY_MODEL)
    assert no_folder.exit_code == 2 and "not a folder" in no_folder.stderr

    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    assert cli("index", empty_folder, "--db", db, "--model", TINY_MODEL).exit_code == 0
    empty = cli("find", "cats", "--db", db)
    assert empty.exit_code == 1 and "No images indexed" in empty.stderr

    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL).exit_code == 0
    mismatch = cli("find", "cats", "--db", db, "--model", "openai/clip-vit-base-patch32")
    assert mismatch.exit_code == 3 and "built with model" in mismatch.stderr
    mismatch = cli("index", small_library, "--db", db, "--model", "openai/clip-vit-base-patch32")
    assert mismatch.exit_code == 3

    nothing = cli("find", "a star", "--db", db, "--threshold", "0.999")
    assert nothing.exit_code == 1

    bad_image = cli("similar", tmp_path / "nope.jpg", "--db", db)
    assert bad_image.exit_code == 2 and "no such image" in bad_image.stderr

    outside = cli("find", "cats", "--db", db, "--in", tmp_path / "elsewhere")
    assert outside.exit_code == 2 and "not a folder" in outside.stderr

    with sqlite3.connect(db) as connection:
        connection.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION + 1])
    newer = cli("find", "cats", "--db", db)
    assert newer.exit_code == 3 and "newer clipsearch" in newer.stderr


def test_offline_missing_model_is_a_clear_message(tmp_path, small_library):
    """A Hub model that is not cached and cannot be downloaded: exit 2, model named, fix given."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "XDG_DATA_HOME": str(tmp_path / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "clipsearch", "index", str(small_library), "--db", str(tmp_path / "i.db")],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in result.stderr
    assert "network" in result.stderr and "--model" in result.stderr
    assert "Traceback" not in result.stderr

    missing_folder = subprocess.run(
        [sys.executable, "-m", "clipsearch", "index", str(small_library), "--db", str(tmp_path / "j.db"),
         "--model", str(tmp_path / "no-such-model-folder")],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert missing_folder.returncode == 2 and "no-such-model-folder" in missing_folder.stderr


def test_an_unreachable_hub_is_noticed_at_once_not_after_its_retries(tmp_path, small_library):
    """No HF_HUB_OFFLINE, and huggingface.co cannot be reached (here: its endpoint is a closed local port):
    the clear message comes in seconds, not after huggingface_hub's ~30 s of retries."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE" and "proxy" not in key.lower()}
    env.update({"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port}",
                "XDG_DATA_HOME": str(tmp_path / "data")})
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "clipsearch", "index", str(small_library), "--db", str(tmp_path / "i.db")],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in result.stderr and "--model" in result.stderr
    assert "Retrying" not in result.stderr
    assert time.monotonic() - started < 20


def test_console_script_help_and_version():
    result = subprocess.run([sys.executable, "-m", "clipsearch", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0
    for command in ("index", "find", "similar", "info"):
        assert command in result.stdout
    version = subprocess.run([sys.executable, "-m", "clipsearch", "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("clipsearch ")


def test_unknown_device_is_a_clear_message(cli, small_library, tmp_path):
    result = cli("index", small_library, "--db", tmp_path / "i.db", "--model", TINY_MODEL, "--device", "tpu")
    assert result.exit_code == 2 and "Unknown device" in result.stderr


def test_kill_9_during_index_then_resume(tmp_path):
    """A real `clipsearch index` process killed mid-run: the index stays valid and the next run finishes the job."""
    library = tmp_path / "photos"
    scenes.write_library(library, 48, seed=11)
    db = tmp_path / "index.db"
    command = [sys.executable, "-m", "clipsearch", "index", str(library), "--db", str(db), "--model", TINY_MODEL,
               "--batch-size", "2", "--workers", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(db, timeout=5) as connection:
                stored = connection.execute("SELECT count(*) FROM images").fetchone()[0]
        except sqlite3.OperationalError:
            continue
        if stored >= 6:
            break
    process.kill()
    process.wait()
    assert 6 <= stored < 48, "the run should have been killed part-way"

    with Store.open(db) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        survived = store.count()
    assert survived >= stored

    resumed = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["unchanged"] == survived
    assert report["new"] + report["unchanged"] == 48
    with Store.open(db) as store:
        assert store.count() == 48


def test_sigterm_during_index_exits_143_and_keeps_the_work(tmp_path):
    """`kill PID` (systemd, a container stopping) unwinds like Ctrl-C: work committed, one line, exit 143."""
    library = tmp_path / "photos"
    scenes.write_library(library, 48, seed=11)
    db = tmp_path / "index.db"
    command = [sys.executable, "-m", "clipsearch", "index", str(library), "--db", str(db), "--model", TINY_MODEL,
               "--batch-size", "2", "--workers", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, stored = time.time() + 120, 0
    while time.time() < deadline and process.poll() is None and stored < 6:
        time.sleep(0.05)
        try:
            with sqlite3.connect(db, timeout=5) as connection:
                stored = connection.execute("SELECT count(*) FROM images").fetchone()[0]
        except sqlite3.OperationalError:
            continue
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert 6 <= stored < 48, "the run should have been stopped part-way"
    assert process.returncode == 143, stderr
    assert "Terminated." in stderr and "Traceback" not in stderr and "internal error" not in stderr
    resumed = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["unchanged"] >= stored


def test_make_clean_removes_everything_the_demo_made(tmp_path, small_library):
    db = tmp_path / "demo-index.db"
    subprocess.run([sys.executable, "-m", "clipsearch", "index", str(small_library), "--db", str(db), "--model",
                    TINY_MODEL, "--quiet"], check=True, capture_output=True, timeout=120)
    assert {p.name for p in tmp_path.glob("demo-index.db*")} >= {"demo-index.db", "demo-index.db.vectors"}
    subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "clean", f"DEMO_DB={db}",
                    f"DEMO_DIR={small_library}"], check=True, capture_output=True, timeout=60)
    assert list(tmp_path.glob("demo-index.db*")) == [] and not small_library.exists()


def test_tagging_with_a_new_vocabulary_needs_no_torch(small_library, tmp_path):
    """The exported text tower embeds a vocabulary's prompts: the first `tag` does not wait for torch."""
    db, vocab = tmp_path / "index.db", tmp_path / "vocab.txt"
    vocab.write_text("red\nblue\nstar\ncircle\n")
    subprocess.run([sys.executable, "-m", "clipsearch", "index", str(small_library), "--db", str(db), "--model",
                    TINY_MODEL, "--quiet"], check=True, capture_output=True, timeout=120)
    script = ("import sys; from clipsearch import Library; "
              f"report = Library({str(db)!r}).tag(vocab={str(vocab)!r}); "
              "print(report.tagged, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["12", "False"]


def _library_with_copies(tmp_path):
    library = tmp_path / "photos"
    written = scenes.write_library(library, 6, seed=4)
    for path, _ in written[:3]:
        (library / "copies").mkdir(exist_ok=True)
        (library / "copies" / path.name).write_bytes(path.read_bytes())
    return library


def test_dedupe_move_into_the_library_is_refused_before_any_report(cli, tmp_path):
    library = _library_with_copies(tmp_path)
    db = tmp_path / "index.db"
    assert cli("index", library, "--db", db, "--model", TINY_MODEL).exit_code == 0
    refused = cli("dedupe", "--db", db, "--move-to", library / "review", "--yes")
    assert refused.exit_code == 2 and "inside the library" in refused.stderr
    assert refused.stdout == "" and "exact copies" not in refused.output, "refused before the report"


def test_trash_says_trash_and_a_second_undo_restores_nothing(cli, tmp_path, monkeypatch):
    library = _library_with_copies(tmp_path)
    db = tmp_path / "index.db"
    assert cli("index", library, "--db", db, "--model", TINY_MODEL).exit_code == 0
    review = tmp_path / "review"
    moved = cli("dedupe", "--db", db, "--move-to", review, "--yes")
    assert moved.exit_code == 0 and "Moved 3 files to the review folder" in moved.stderr
    manifest = next(review.glob("*.jsonl"))
    first = cli("dedupe", "--db", db, "--undo", manifest)
    assert first.exit_code == 0 and "Restored 3 files" in first.stderr
    second = cli("dedupe", "--db", db, "--undo", manifest)
    assert second.exit_code == 1 and "Restored 3" not in second.stderr and "already back" in second.stderr
    assert [p for p in review.rglob("*") if p.is_dir()] == [], "undo leaves no empty folders behind"

    import send2trash

    trashed: list[str] = []
    monkeypatch.setattr(send2trash, "send2trash", lambda path: (trashed.append(str(path)), os.remove(path)))
    sent = cli("dedupe", "--db", db, "--trash", "--yes")
    assert sent.exit_code == 0 and "Sent 3 files to the trash" in sent.stderr and "Moved" not in sent.stderr
    assert len(trashed) == 3


def test_similar_to_an_image_outside_the_index_needs_no_torch(small_library, tmp_path):
    """An image that is not indexed goes through the image tower `index` prepared: no seconds of torch."""
    db = tmp_path / "index.db"
    subprocess.run([sys.executable, "-m", "clipsearch", "index", str(small_library), "--db", str(db), "--model",
                    TINY_MODEL, "--quiet"], check=True, capture_output=True, timeout=120)
    original = min(small_library.glob("*.jpg"))
    outside = tmp_path / "elsewhere" / "copy.jpg"
    outside.parent.mkdir()
    outside.write_bytes(original.read_bytes())
    script = ("import sys; from clipsearch import Library; "
              f"hits = Library({str(db)!r}).similar({str(outside)!r}, top=1); "
              "print(hits[0].path, round(hits[0].score, 3), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    path, score, torch_loaded = done.stdout.split()
    assert path == str(original) and float(score) >= 0.99 and torch_loaded == "False"


@pytest.mark.parametrize("command", ["find", "index"])
def test_ctrl_c_says_work_is_saved_only_where_there_is_work(cli, scene_index, tmp_path, monkeypatch, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"clipsearch.library.Library.{command}", interrupted)
    args = ["a red circle"] if command == "find" else [tmp_path]
    result = cli(command, *args, "--db", scene_index)
    assert result.exit_code == 130
    assert "Interrupted." in result.output
    assert ("Work so far is saved" in result.output) == (command == "index")  # a query has nothing to save
