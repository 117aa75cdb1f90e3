"""mdr.quiet: TensorFlow's start-up noise kept off stderr, every other line kept, `mdr --debug` shows all."""
import subprocess
import sys

_WRITES = r"""
import os, sys
from mdr import quiet
with quiet.filtered_stderr():
    os.write(2, b"before\n")
    os.write(2, b"2026-12-02 E external/cuda_fft.cc:479] Unable to register cuFFT factory: Attempting ...\n")
    print("from python", file=sys.stderr)
    os.write(2, b"E cuda_blas.cc] Unable to register cuBLAS factory: ...\nafter\n")
os.write(2, b"outside\n")
"""


def test_noise_is_dropped_and_every_other_line_kept_in_order():
    done = subprocess.run([sys.executable, "-c", _WRITES], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["before", "from python", "after", "outside"]


def run_mdr(*args):
    return subprocess.run([sys.executable, "-m", "mdr.cli", *args], capture_output=True, text=True, timeout=120)


def test_an_error_of_a_tensorflow_command_is_one_line_and_debug_shows_the_rest(tmp_path):
    missing = str(tmp_path / "none")
    done = run_mdr("evaluate", "--model-dir", missing, "--data", missing)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"mdr evaluate: error: {missing} holds no trained model (no "
                                        "train_config.json); run `mdr train` first"], done.stderr
    done = run_mdr("--debug", "evaluate", "--model-dir", missing, "--data", missing)
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
