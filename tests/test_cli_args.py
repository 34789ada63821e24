"""Bad numeric flag values are usage errors (exit 2, the flag named); a closed stdout is quiet."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cad3d.cli import main
from cad3d.cli._args import MAX_SAMPLING_STEPS, non_negative_int, positive_float, positive_int, sampling_steps

REPO = Path(__file__).resolve().parent.parent

TRAIN = ["train", "toy", "--data", "d"]
CONVERT = ["convert", "x.png", "-o", "out"]
EVAL = ["eval", "--data", "d", "-o", "out"]

BAD = [
    (TRAIN, "--epochs", "0"),
    (TRAIN, "--epochs", "-3"),
    (TRAIN, "--epochs", "two"),
    (TRAIN, "--batch-size", "0"),
    (TRAIN, "--lr", "0"),
    (TRAIN, "--lr", "-1e-3"),
    (TRAIN, "--lr", "nan"),
    (TRAIN, "--lr", "inf"),
    (TRAIN, "--keep-last", "-1"),
    (TRAIN, "--num-workers", "-1"),
    (TRAIN, "--max-steps", "0"),
    (TRAIN, "--warmup-steps", "-1"),
    (TRAIN, "--warmup-steps", "1.5"),
    (CONVERT, "--batch-size", "0"),
    (CONVERT, "--num-points", "0"),
    (CONVERT, "--steps", "0"),
    (CONVERT, "--steps", str(MAX_SAMPLING_STEPS + 1)),
    (CONVERT, "--strength", "0"),
    (CONVERT, "--strength", "1.5"),
    (EVAL, "--strength", "nan"),
    (EVAL, "--batch-size", "0"),
    (EVAL, "--num-points", "-5"),
    (EVAL, "--steps", "0"),
    (EVAL, "--max-samples", "0"),
    (EVAL, "--examples", "0"),
    (EVAL, "--methods", "magic"),
    (["ckpt", "prune", "folder"], "--keep-last", "-1"),
    (["data", "synth", "--out", "d"], "--num-samples", "0"),
    (["data", "preview", "d"], "--num-samples", "x"),
]


@pytest.mark.parametrize("base,flag,value", BAD, ids=[f"{b[0]}{f}={v}" for b, f, v in BAD])
def test_bad_values_exit_2_naming_the_flag(base, flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        main([*base, flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    message = err.rsplit("error: ", 1)[-1]
    assert "usage:" in err and message.startswith("argument ") and flag in message and "Traceback" not in err


def test_good_values_parse():
    assert positive_int("3") == 3 and non_negative_int("0") == 0 and positive_float("1e-4") == 1e-4
    assert sampling_steps(str(MAX_SAMPLING_STEPS)) == MAX_SAMPLING_STEPS
    for fn, text in [(positive_int, "0"), (non_negative_int, "-1"), (positive_float, "0"), (positive_float, "x"),
                     (sampling_steps, "1001"), (positive_int, "2.5")]:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


def test_valid_edges_are_accepted():
    from cad3d.cli import build_parser

    parser = build_parser()
    args = parser.parse_args([*TRAIN, "--keep-last", "0", "--num-workers", "0", "--warmup-steps", "0", "--lr", "0.5"])
    assert (args.keep_last, args.num_workers, args.warmup_steps, args.lr) == (0, 0, 0, 0.5)
    args = parser.parse_args([*EVAL, "--methods", "geometric", "mean", "--steps", "1000"])
    assert args.methods == ["geometric", "mean"] and args.steps == 1000
    assert parser.parse_args(["ckpt", "prune", "f", "--keep-last", "0"]).keep_last == 0


def test_eval_method_choices_match_the_evaluation():
    from cad3d.cli import eval as eval_cli
    from cad3d.evaluation.evaluate import ALL_METHODS

    assert tuple(eval_cli.ALL_METHODS) == tuple(ALL_METHODS)


def test_positive_helper_of_data_is_the_shared_one():
    from cad3d.cli import data

    assert data._positive is positive_int


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_broken_pipe_is_quiet():
    shell = f"{sys.executable} -m cad3d --help | head -1"
    proc = subprocess.run(shell, shell=True, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: cad3d")
    assert proc.stderr == ""


def test_a_reader_that_closed_stdout_gets_no_traceback():
    # The read end is closed before cad3d writes: every write fails with EPIPE (deterministic).
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "cad3d", "--help"], cwd=REPO, env=_env(), stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert proc.stderr == "" and proc.returncode == 0


def test_strength_reaches_the_converter(tmp_path, monkeypatch):
    from cad3d.cli._args import make_converter

    monkeypatch.chdir(tmp_path)  # no trained_models/ here: nothing to load
    args = argparse.Namespace(device="cpu", vit=None, diffusion=None, refine=None, depth_model=None,
                              models_dir=str(tmp_path), strength=0.5)
    assert make_converter(args).refine_strength == 0.5
