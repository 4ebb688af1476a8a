"""Faults and concurrency: two processes on one cache entry, a full disk, damaged chunks, entries
corrupted in place, run outputs replaced only when complete, an unreadable image in a DataLoader
worker, an interrupt during extraction."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeVLM, write_digit_images
from vlmood import utils as U
from vlmood.data.sources import load_source
from vlmood.errors import RunError, UsageError
from vlmood.eval.runner import EvalOptions, EvalSets, OODSet, ScoreSpec, run_eval
from vlmood.features import cache as C
from vlmood.features.cache import ImageEntry
from vlmood.features.extract import extract_features

EXE = shutil.which("vlmood", path=str(Path(sys.executable).parent)) or "vlmood"


def _extract(model, src, cache, **kw):
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    kw.setdefault("chunk_size", 5)
    return extract_features(model, src, cache_root=cache, progress=False, **kw)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _write_pngs(folder: Path, n: int, seed: int, size: int = 16) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def _eval_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        EXE,
        "eval",
        "--model",
        "tiny-test",
        "--device",
        "cpu",
        "--id",
        str(data / "id"),
        "--ood",
        f"far/noise={data / 'ood'}",
        "--workers",
        "0",
        "--no-progress",
        "--score",
        "mcm,energy",
        "--out",
        str(out),
        *extra,
    ]


def _metrics(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    return {label: e["per_set"] for label, e in res["scores"].items()}


def _no_temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")]


# ------------------------------------------------------------------------------------------ concurrency
@pytest.mark.slow
def test_two_eval_processes_share_one_cache_entry(tmp_path):
    """Two `vlmood eval` on the same data and cache at once: both finish with the same metrics and
    one valid entry per set (today the first to finish deletes chunks the other still needs)."""
    data = tmp_path / "data"
    for c in ("cat", "dog"):  # more than one 2048-image chunk, so the processes overlap
        _write_pngs(data / "id" / c, 1100, seed=len(c) + ord(c[0]))
    _write_pngs(data / "ood", 40, seed=7)
    env = dict(os.environ, VLMOOD_CACHE=str(tmp_path / "cache"))
    procs = [
        subprocess.Popen(
            _eval_cmd(data, tmp_path / f"out{j}"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for j in (1, 2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_so, se) in zip(procs, outs):
        assert p.returncode == 0, se.decode()[-3000:]
    assert _metrics(tmp_path / "out1") == _metrics(tmp_path / "out2")
    entries = sorted((tmp_path / "cache" / "images").iterdir())
    assert len(entries) == 2  # ID and OOD, image features
    for d in entries:
        e = ImageEntry(tmp_path / "cache", d.name, "image")
        assert e.check() is None and not (d / "chunks").exists()
    assert not _no_temps(tmp_path / "cache")


def test_a_second_extraction_waits_for_the_first_and_reads_its_entry(digit_folder, tmp_path):
    """Deterministic interleaving: A stops after its first chunk; B starts on the same entry. B
    must wait for A (not encode beside it, and not lose A's chunks), then read A's entry."""
    src = load_source(str(digit_folder))
    cache = tmp_path / "cache"
    go = threading.Event()

    class Slow(FakeVLM):
        def encode_image_features(self, images, kinds=("image",)):
            if self.images_seen >= 5:
                go.wait(timeout=30)
            return super().encode_image_features(images, kinds)

    a_model, errors, got_a = Slow(), [], []

    def run_a():
        try:
            got_a.append(_extract(a_model, src, cache, batch_size=5))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ta = threading.Thread(target=run_a)
    ta.start()
    chunk0 = None
    for _ in range(200):
        found = list((cache / "images").glob("*/chunks/000000.npz")) if (cache / "images").exists() else []
        if found:
            chunk0 = found[0]
            break
        time.sleep(0.05)
    assert chunk0 is not None
    threading.Timer(1.5, go.set).start()  # A goes on while B is (with the fix) waiting for the lock
    b_model = FakeVLM()
    fs_b = _extract(b_model, src, cache, batch_size=5)
    ta.join(timeout=60)
    assert not errors, errors
    assert b_model.images_seen == 0  # B read A's entry
    np.testing.assert_array_equal(fs_b.arrays["image"], got_a[0].arrays["image"])
    ref = _extract(FakeVLM(), src, tmp_path / "ref", batch_size=5)  # (A ran in a thread: float noise)
    np.testing.assert_allclose(fs_b.arrays["image"], ref.arrays["image"], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ disk full
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_disk_full_while_assembling_is_a_clear_error_and_leaves_nothing_trusted(
    digit_folder, tmp_path, monkeypatch
):
    src = load_source(str(digit_folder))
    cache = tmp_path / "cache"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.os, "posix_fallocate", full)
    with pytest.raises(RunError, match=r"no space left on device writing .*data\.npy; free space or set "):
        _extract(FakeVLM(), src, cache)
    assert not list(cache.rglob("manifest.json")) and not _no_temps(cache)
    monkeypatch.undo()
    m = FakeVLM()
    fs = _extract(m, src, cache)
    assert m.images_seen == 0  # the chunks written before the disk filled are kept
    np.testing.assert_array_equal(
        fs.arrays["image"], _extract(FakeVLM(), src, tmp_path / "r").arrays["image"]
    )


def test_disk_full_while_writing_a_chunk_names_the_file(digit_folder, tmp_path, monkeypatch):
    src = load_source(str(digit_folder))
    cache = tmp_path / "cache"
    real = np.savez

    def savez(f, **arrays):
        real(f, **arrays)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.np, "savez", savez)
    with pytest.raises(RunError) as ei:
        _extract(FakeVLM(), src, cache)
    assert "no space left on device writing" in str(ei.value) and "000000.npz" in str(ei.value)
    assert "--cache-dir/VLMOOD_CACHE" in str(ei.value)
    assert not list(cache.rglob("*.npz")) and not _no_temps(cache)


def _can_mount_tmpfs(tmp_path: Path) -> str | None:
    if sys.platform != "linux" or not shutil.which("unshare"):
        return "needs Linux with unshare(1) to make a size-limited tmpfs"
    probe = tmp_path / "probe"
    probe.mkdir()
    p = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{probe}'"],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        return f"cannot mount a tmpfs in a user namespace here: {p.stderr.strip() or p.returncode}"
    return None


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """`vlmood eval` with its cache on a tmpfs too small for data.npy: one clear line and exit 1
    (today: SIGBUS from a memory map onto a sparse file, no message, a `.data.npy.*.tmp` orphan);
    after space is freed the same command gives the result of an unlimited run."""
    why = _can_mount_tmpfs(tmp_path)
    if why:
        pytest.skip(why)
    data = tmp_path / "data"
    for c in ("a", "b"):
        _write_pngs(data / "id" / c, 200, seed=ord(c))
    _write_pngs(data / "ood", 20, seed=3)
    ref = subprocess.run(
        _eval_cmd(data, tmp_path / "ref"),
        env=dict(os.environ, VLMOOD_CACHE=str(tmp_path / "refcache")),
        capture_output=True,
        text=True,
    )
    assert ref.returncode == 0, ref.stderr
    # the ID entry: a one-chunk .npz (~data size), partial.json, then data.npy (the same size again)
    id_data = max((tmp_path / "refcache" / "images").glob("*/data.npy"), key=lambda p: p.stat().st_size)
    page = 4096
    pages = -(-id_data.stat().st_size // page)
    size = (1 + (pages + 1) + pages // 2) * page  # room for the chunk, not for data.npy beside it
    cache = tmp_path / "cache"
    cache.mkdir()
    cmd = " ".join(f"'{a}'" for a in _eval_cmd(data, tmp_path / "out"))
    script = f"""
set -u
mount -t tmpfs -o size={size} tmpfs '{cache}' || exit 99
{cmd} > '{tmp_path}/out1.txt' 2>&1; echo $? > '{tmp_path}/rc1'
find '{cache}' -type f > '{tmp_path}/files1'
test -e '{tmp_path}/out' && touch '{tmp_path}/out_after_failure'
mount -o remount,size=64m '{cache}'
{cmd} > '{tmp_path}/out2.txt' 2>&1; echo $? > '{tmp_path}/rc2'
find '{cache}' > '{tmp_path}/files2'
"""
    p = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        env=dict(os.environ, VLMOOD_CACHE=str(cache)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    out1 = (tmp_path / "out1.txt").read_text()
    rc1 = int((tmp_path / "rc1").read_text())
    assert rc1 == 1, (rc1, out1[-3000:])
    assert "Traceback" not in out1 and "Bus error" not in out1
    errs = [ln for ln in out1.splitlines() if ln.startswith("vlmood eval:")]
    assert len(errs) == 1 and "no space left on device writing " + str(cache) in errs[0], out1[-3000:]
    assert "free space or set --cache-dir/VLMOOD_CACHE elsewhere" in errs[0]
    files1 = (tmp_path / "files1").read_text().split()
    assert not [f for f in files1 if f.endswith(".tmp") or f.endswith("manifest.json")], files1
    assert not (tmp_path / "out_after_failure").exists()
    rc2 = int((tmp_path / "rc2").read_text())
    assert rc2 == 0, (tmp_path / "out2.txt").read_text()[-3000:]
    files2 = (tmp_path / "files2").read_text().split()
    assert not [f for f in files2 if f.endswith(".tmp") or "/chunks" in f], files2
    assert _metrics(tmp_path / "out") == _metrics(tmp_path / "ref")


def test_stale_temporaries_are_swept(digit_folder, tmp_path):
    """A kill -9 during a write leaves `.NAME.*.tmp`; the next run on that entry removes it."""
    src = load_source(str(digit_folder))
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        _extract(FakeVLM(fail_after=5), src, cache)
    entry = next((cache / "images").iterdir())
    dead = _dead_pid()
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]  # as vlmood.utils names temps
    orphans = [
        entry / f".data.npy.{dead}@{host}.abc123.tmp",
        entry / "chunks" / f".000001.npz.{dead}@{host}.xyz_9.tmp",
        entry / ".data.npy.tmpk2j3.tmp",  # an old-style (pid-less) name
    ]
    for o in orphans:
        o.write_bytes(b"\0" * 100)
    fs = _extract(FakeVLM(), src, cache)
    assert fs.arrays["image"].shape[0] == 15
    assert not _no_temps(cache)
    # outside a locked entry: a dead writer's temp goes at once, a live writer's stays until old
    d = tmp_path / "text"
    d.mkdir()
    live = d / f".a.npy.{os.getppid()}@{host}.q1.tmp"
    gone = d / f".a.npy.{dead}@{host}.q2.tmp"
    unknown = d / ".b.npy.zzz.tmp"
    for f in (live, gone, unknown):
        f.write_text("x")
    assert set(U.sweep_stale_temps(d)) == {gone}
    old = time.time() - 2 * 86400
    os.utime(live, (old, old))
    os.utime(unknown, (old, old))
    assert set(U.sweep_stale_temps(d)) == {live, unknown}


# ------------------------------------------------------------------------------------------ damage
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_chunk_is_discarded_and_recomputed(digit_folder, tmp_path, caplog, damage):
    src = load_source(str(digit_folder))
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        _extract(FakeVLM(fail_after=10), src, cache, batch_size=5)  # chunks 0 and 1 finished
    chunk = next((cache / "images").glob("*/chunks/000001.npz"))
    raw = chunk.read_bytes()
    if damage == "truncate":
        chunk.write_bytes(raw[: len(raw) // 2])
    else:  # same size: garbage in the middle of the array data
        mid = len(raw) // 2
        chunk.write_bytes(raw[:mid] + bytes(255 - b for b in raw[mid : mid + 64]) + raw[mid + 64 :])
    m = FakeVLM()
    with caplog.at_level("WARNING"):
        fs = _extract(m, src, cache, batch_size=5)
    assert str(chunk) in caplog.text and "damaged" in caplog.text
    ref = _extract(FakeVLM(), src, tmp_path / "ref", batch_size=5)
    np.testing.assert_array_equal(fs.arrays["image"], ref.arrays["image"])
    assert m.images_seen in (5, 10)  # chunk 2, plus chunk 1 again
    assert not (chunk.parent).exists()


def test_entry_corrupted_without_changing_size_is_rebuilt(digit_folder, tmp_path, caplog):
    src = load_source(str(digit_folder))
    cache = tmp_path / "cache"
    fs = _extract(FakeVLM(), src, cache)
    ref = np.array(fs.arrays["image"])
    data = cache / "images" / fs.keys["image"] / "data.npy"
    del fs
    raw = bytearray(data.read_bytes())
    raw[-8:] = b"\x00\x00\x80\x7f" * 2  # two floats become +inf; the size is unchanged
    data.write_bytes(bytes(raw))
    getattr(C, "_VERIFIED", set()).clear()  # a new process: nothing verified yet
    m = FakeVLM()
    with caplog.at_level("WARNING"):
        fs2 = _extract(m, src, cache)
    assert "checksum" in caplog.text and m.images_seen == 15
    np.testing.assert_array_equal(fs2.arrays["image"], ref)
    # an entry whose manifest has no checksums (an older vlmood) is not trusted either
    man_path = data.parent / "manifest.json"
    man = json.loads(man_path.read_text())
    del man["blake2b"]
    man_path.write_text(json.dumps(man))
    m3 = FakeVLM()
    _extract(m3, src, cache)
    assert m3.images_seen == 15


def test_checksums_are_verified_once_per_process(digit_folder, tmp_path, monkeypatch):
    src = load_source(str(digit_folder))
    cache = tmp_path / "cache"
    _extract(FakeVLM(), src, cache)
    calls = []
    real = C.blake2b_file
    monkeypatch.setattr(C, "blake2b_file", lambda p: calls.append(p) or real(p))
    C._VERIFIED.clear()
    for _ in range(3):
        _extract(FakeVLM(), src, cache)
    assert len(calls) == 2  # data.npy and valid.npy, once


# ------------------------------------------------------------------------------------------ run outputs
def _sets(digit_folder: Path, tmp_path: Path) -> EvalSets:
    ood = write_digit_images(tmp_path / "ood", [7, 8], per_class=5, flat=True)
    src = load_source(str(digit_folder))
    return EvalSets(
        id=src, classnames=list(src.classnames), ood=[OODSet("digits", load_source(str(ood)), "far")]
    )


def _opts(cache: Path, templates=("a photo of a {}.",)) -> EvalOptions:
    return EvalOptions(templates=list(templates), cache_dir=str(cache), num_workers=0, progress=False)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in _files(root)}


def test_a_rerun_that_fails_half_way_leaves_the_previous_outputs(digit_folder, tmp_path, monkeypatch):
    sets, out, cache = _sets(digit_folder, tmp_path), tmp_path / "run", tmp_path / "cache"
    run_eval(FakeVLM(), sets, [ScoreSpec("mcm"), ScoreSpec("msp")], out, _opts(cache))
    before = _tree(out)
    from vlmood.eval import heads as H

    real, calls = H.score_with_head, []

    def fail_second(*a, **k):
        calls.append(1)
        if len(calls) > 2:  # mcm (ID, OOD) done and written; msp fails
            raise RuntimeError("simulated failure half way")
        return real(*a, **k)

    monkeypatch.setattr(H, "score_with_head", fail_second)
    with pytest.raises(RuntimeError, match="half way"):
        # other templates: new mcm raw scores that would not match the old results.json
        run_eval(FakeVLM(), sets, [ScoreSpec("mcm"), ScoreSpec("msp")], out, _opts(cache, ["a {}"]))
    assert _tree(out) == before
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    res = run_eval(FakeVLM(), sets, [ScoreSpec("mcm")], out, _opts(cache, ["a {}"]))
    assert sorted(_tree(out)) == ["results.json", "scores/mcm.npz"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert res["templates"]["templates"] == ["a {}"]


def test_out_naming_a_file_or_a_foreign_folder_is_refused_before_any_work(digit_folder, tmp_path):
    sets, cache = _sets(digit_folder, tmp_path), tmp_path / "cache"
    f = tmp_path / "results.txt"
    f.write_text("mine")
    m = FakeVLM()
    with pytest.raises(UsageError, match="existing file"):
        run_eval(m, sets, [ScoreSpec("mcm")], f, _opts(cache))
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"not a vlmood run's outputs \(holiday.jpg\)"):
        run_eval(m, sets, [ScoreSpec("mcm")], foreign, _opts(cache))
    assert m.images_seen == 0 and f.read_text() == "mine" and (foreign / "holiday.jpg").exists()


def test_neglabel_artifact_paths_name_the_final_folder(digit_folder, tmp_path):
    sets, out, cache = _sets(digit_folder, tmp_path), tmp_path / "run", tmp_path / "cache"
    vocab = {"noun": [f"thing{i}" for i in range(40)], "adj": [f"odd{i}" for i in range(10)]}
    res = run_eval(
        FakeVLM(), sets, [ScoreSpec("neglabel", {"vocabulary": vocab, "ngroup": 1})], out, _opts(cache)
    )
    path = next(iter(res["scores"].values()))["artifacts"]["neglabel_labels_file"]
    assert Path(path).parent == out / "artifacts" and Path(path).exists()
    on_disk = json.loads((out / "results.json").read_text())
    assert next(iter(on_disk["scores"].values()))["artifacts"]["neglabel_labels_file"] == path


# ------------------------------------------------------------------------------------------ workers, interrupts
def test_truncated_image_in_a_dataloader_worker_is_one_clear_line(tmp_path):
    data = tmp_path / "data"
    _write_pngs(data / "id" / "a", 6, seed=1, size=32)
    _write_pngs(data / "id" / "b", 6, seed=2, size=32)
    _write_pngs(data / "ood", 6, seed=3, size=32)
    bad = data / "id" / "b" / "00003.png"
    bad.write_bytes(bad.read_bytes()[:60])
    cmd = [a if a != "0" else "2" for a in _eval_cmd(data, tmp_path / "out")]  # --workers 2
    p = subprocess.run(
        cmd, env=dict(os.environ, VLMOOD_CACHE=str(tmp_path / "cache")), capture_output=True, text=True
    )
    assert p.returncode in (1, 2), p.stderr
    text = p.stdout + p.stderr
    assert "Traceback" not in text and "DataLoader worker" not in text, text[-3000:]
    errs = [ln for ln in p.stderr.splitlines() if ln.startswith("vlmood eval:")]
    assert len(errs) == 1 and f"cannot read image {bad}" in errs[0] and "--skip-corrupt" in errs[0], p.stderr
    assert not (tmp_path / "out").exists()


def test_skip_corrupt_with_workers_records_the_file(tmp_path):
    folder = tmp_path / "imgs"
    _write_pngs(folder / "a", 4, seed=1)
    _write_pngs(folder / "b", 4, seed=2)
    bad = folder / "b" / "00001.png"
    bad.write_bytes(b"not an image")
    fs = _extract(FakeVLM(), load_source(str(folder)), tmp_path / "cache", num_workers=2, skip_corrupt=True)
    assert fs.skipped == [str(bad)]


def test_interrupt_is_not_swallowed_and_leaves_no_trusted_entry(digit_folder, tmp_path):
    src = load_source(str(digit_folder))
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        _extract(FakeVLM(fail_after=5), src, cache, num_workers=2, batch_size=5)
    assert not list(cache.rglob("manifest.json")) and not _no_temps(cache)
    # the lock was released: the same process (another file descriptor) takes it at once
    fs = _extract(FakeVLM(), src, cache, batch_size=5)
    ref = _extract(FakeVLM(), src, tmp_path / "r", batch_size=5)
    np.testing.assert_array_equal(fs.arrays["image"], ref.arrays["image"])


@pytest.mark.slow
def test_kill_9_during_cache_then_rerun_gives_the_uninterrupted_result(tmp_path):
    data = tmp_path / "data"
    for c in ("a", "b"):  # two 2048-image chunks: the kill comes after the first
        _write_pngs(data / "id" / c, 1060, seed=ord(c))
    _write_pngs(data / "ood", 10, seed=3)
    cache = tmp_path / "cache"
    env = dict(os.environ, VLMOOD_CACHE=str(cache))
    cmd = [EXE, "cache", "--model", "tiny-test", "--device", "cpu", "--id", str(data / "id")]
    cmd += ["--ood", f"noise={data / 'ood'}", "--workers", "0", "--no-progress"]
    # past the first chunk, decoding slows down (injected with sitecustomize), so the kill surely
    # lands in the second chunk however fast or loaded the machine is
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time\n"
        "import vlmood.data.sources as S\n"
        "_open, _n = S.open_image, [0]\n"
        "def _slow(path):\n"
        "    _n[0] += 1\n"
        "    if _n[0] > 2060:\n"
        "        time.sleep(1.0)\n"
        "    return _open(path)\n"
        "S.open_image = _slow\n"
    )
    p = subprocess.Popen(
        cmd, env=dict(env, PYTHONPATH=str(hook)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(1200):
            if list(cache.glob("images/*/chunks/000000.npz")) or p.poll() is not None:
                break
            time.sleep(0.05)
        p.kill()
    finally:
        p.wait()
    assert not list(cache.rglob("manifest.json"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run(
        cmd, env=dict(env, VLMOOD_CACHE=str(tmp_path / "fresh")), capture_output=True, text=True
    )
    assert r2.returncode == 0, r2.stderr
    for d in (cache / "images").iterdir():
        other = tmp_path / "fresh" / "images" / d.name
        assert (d / "data.npy").read_bytes() == (other / "data.npy").read_bytes()
    assert not _no_temps(cache)


def test_text_cache_entry_corrupted_in_place_is_recomputed(tmp_path, caplog):
    from vlmood.features.extract import encode_texts

    texts = ["a photo of a cat", "a photo of a dog"]
    ref = encode_texts(FakeVLM(), texts, tmp_path)
    arr = next((tmp_path / "text").glob("*.npy"))
    raw = bytearray(arr.read_bytes())
    raw[-4:] = b"\x00\x00\x80\x7f"  # the last float becomes +inf; same size
    arr.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        got = encode_texts(FakeVLM(), texts, tmp_path)
    assert "checksum" in caplog.text
    np.testing.assert_array_equal(got, ref)
