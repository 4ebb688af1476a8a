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


def _slow_decoding_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a run whose image decoding sleeps 0.5 s per image (a sitecustomize hook on
    PYTHONPATH), so that a signal lands mid-extraction on any machine."""
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
    return dict(os.environ, VLMOOD_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(hook))


def _wait_for_extraction(cache: Path, proc: subprocess.Popen, limit_s: float = 120) -> None:
    """Until the run has started encoding images (its cache entry exists), then a little more."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and proc.poll() is None:
        if list(cache.glob("*/*")):  # a lock or an entry folder: encoding has begun
            break
        time.sleep(0.1)
    time.sleep(1.0)


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
    (
        "missing NegLabel labels file",
        ["--score", "neglabel:labels_file=/nonexistent/labels.txt"],
        2,
        ["labels_file", "/nonexistent/labels.txt", "does not exist"],
    ),
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
    env = _slow_decoding_env(tmp_path)
    proc = subprocess.Popen(
        [EXE, *eval_args(data, tmp_path / "out", "--batch-size", "2")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    _wait_for_extraction(tmp_path / "cache", proc)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line(p, 1, "interrupted", "rerun")
    assert not (tmp_path / "out" / "results.json").exists()


def fit_args(data, out: Path, *extra: str) -> list[str]:
    return ["fit", "coop", "--model", "tiny-test", "--id", str(data["id"]), "--workers", "0"] + [
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


FIT_CASES = [
    ("param not an int", ["--param", "n_ctx=abc"], ["n_ctx", "integer", "abc"]),
    ("param not KEY=VALUE", ["--param", "n_ctx"], ["n_ctx", "KEY=VALUE"]),
    ("train batch size 0", ["--train-batch-size", "0"], ["batch", "positive"]),
    ("shots 0", ["--shots", "0"], ["shots", ">= 1"]),
    ("epochs 0", ["--epochs", "0"], ["epochs", "positive"]),
    ("ood given to fit", ["--ood", "x=/tmp"], ["--ood"]),
]


@pytest.mark.parametrize("case", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_mistakes_give_one_line(case, data, tmp_path):
    _, extra, needles = case
    out = tmp_path / "adapter"
    p = run(fit_args(data, out, *extra), cache=tmp_path)
    assert_one_line(p, 2, *needles)
    assert not out.exists(), "a refused fit must not leave output"


def test_fit_out_is_an_existing_file(data, tmp_path):
    f = tmp_path / "adapter.bin"
    f.write_bytes(b"x")
    assert_one_line(run(fit_args(data, f), cache=tmp_path), 2, "existing file")
    assert f.read_bytes() == b"x"


@pytest.mark.parametrize(
    "template, words",
    [
        ("a photo of a {x}.", ["{x}"]),
        ("a photo of a {{}}.", ["placeholder"]),
        ("{} {:>300000000}", ["{:>300000000}"]),
    ],
    ids=["named field", "escaped braces only", "format spec"],
)
def test_bad_template_file_gives_one_line(template, words, data, tmp_path):
    f = tmp_path / "templates.txt"
    f.write_text(f"a photo of a {{}}.\n{template}\n")
    p = run(eval_args(data, tmp_path / "out", "--templates", str(f)), cache=tmp_path)
    assert_one_line(p, 2, f"{f}:2", *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["cache", "fit"])
def test_ctrl_c_during_cache_and_fit(command, data, tmp_path):
    env = _slow_decoding_env(tmp_path)
    if command == "cache":
        args = [
            "cache",
            "--model",
            "tiny-test",
            "--id",
            str(data["id"]),
            "--ood",
            f"far/digits={data['ood']}",
            "--workers",
            "0",
            "--no-progress",
            "--batch-size",
            "2",
        ]
    else:
        args = fit_args(data, tmp_path / "adapter", "--batch-size", "2")
    proc = subprocess.Popen(
        [EXE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    _wait_for_extraction(tmp_path / "cache", proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line(p, 1, "interrupted", "--resume" if command == "fit" else "rerun")
    leftovers = [q for q in tmp_path.rglob("*.tmp")]
    assert not leftovers, leftovers
