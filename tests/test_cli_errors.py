"""Ordinary mistakes through the real ``vlmood`` executable: one clear line, exit 2 (usage) or
1 (runtime), no traceback, no partial output."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_digit_images

EXE = shutil.which("vlmood", path=str(Path(sys.executable).parent)) or "vlmood"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clierr")
    return {
        "id": write_digit_images(root / "id", [0, 1, 2], per_class=4),
        "ood": write_digit_images(root / "ood", [7, 8], per_class=4, flat=True),
        "root": root,
    }


def run(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 300, **kw):
    env = dict(os.environ, **(env_extra or {}))
    env.setdefault("VLMOOD_CACHE", str(Path(kw.pop("cache", "/tmp")) / "vlmood-cli-errors-cache"))
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=env, **kw)


def eval_args(data, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        "tiny-test",
        "--id",
        str(data["id"]),
        "--ood",
        f"far/digits={data['ood']}",
        "--workers",
        "0",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def assert_one_line(p, code: int, *needles: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("vlmood ")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


CASES = [
    # (id, extra eval arguments, exit status, words the message must contain)
    ("score param without =", ["--score", "mcm:temperature"], 2, ["temperature", "key=value"]),
    ("yaml tag in score param", ["--score", "mcm:temperature=!!python/name:os.system"], 2, ["number"]),
    ("float where int", ["--score", "knn:k=2.5"], 2, ["'k'", "integer", "2.5"]),
    ("bool where float", ["--score", "mcm:temperature=true"], 2, ["temperature", "number"]),
    ("unknown score param", ["--score", "mcm:temp=2"], 2, ["'temp'", "temperature"]),
    ("unknown score", ["--score", "mcn"], 2, ["mcn", "mcm"]),
    ("device typo", ["--device", "gpu7"], 2, ["gpu7", "cpu, cuda"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_usage_mistakes_give_one_line(case, data, tmp_path):
    _, extra, code, needles = case
    out = tmp_path / "out"
    p = run(eval_args(data, out, *extra), cache=tmp_path)
    assert_one_line(p, code, *needles)
    assert not out.exists(), "a refused run must not leave output"


def test_cuda_without_gpu(data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = run(eval_args(data, tmp_path / "out", "--device", "cuda"), cache=tmp_path)
    assert_one_line(p, 2, "no CUDA GPU", "--device cpu")


def test_out_is_an_existing_file(data, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    p = run(eval_args(data, f), cache=tmp_path)
    assert_one_line(p, 2, str(f), "existing file")
    assert f.read_text() == "keep me"


def test_broken_pipe_is_quiet(tmp_path):
    p = subprocess.run(
        f"'{EXE}' data list | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0
    assert len(p.stdout.splitlines()) == 1
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_says_how_to_resume(sig, data, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during eval."""
    # image decoding that sleeps (injected with sitecustomize) keeps the run busy mid-extraction
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time\n"
        "import vlmood.data.sources as S\n"
        "_open = S.open_image\n"
        "def _slow(path):\n"
        "    time.sleep(0.5)\n"
        "    return _open(path)\n"
        "S.open_image = _slow\n"
    )
    env = dict(os.environ, VLMOOD_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(hook))
    proc = subprocess.Popen(
        [EXE, *eval_args(data, tmp_path / "out", "--batch-size", "2")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    time.sleep(8)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line(p, 1, "interrupted", "rerun")
    assert not (tmp_path / "out" / "results.json").exists()
