"""TensorFlow's start-up lines that are noise to a user, kept off the terminal (`mdr --debug` keeps them).

On a machine without a GPU, the TensorFlow wheel with its CUDA libraries prints, from C++ while it is
imported, `E ... Unable to register cuFFT factory: ...` (and cuDNN, cuBLAS) and a TensorRT warning: harmless
there, but they read as errors. `TF_CPP_MIN_LOG_LEVEL` cannot drop them without dropping real errors too,
so the first import of TensorFlow runs with the process's stderr (file descriptor 2, where C++ writes) sent
to a temporary file, and every other line is written back.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

NOISE = re.compile(rb"Unable to register cu(FFT|DNN|BLAS) factory|TF-TRT Warning: Could not find TensorRT")


@contextlib.contextmanager
def stderr_to_file(prefix: str = "mdr-"):
    """While open, file descriptor 2 (this process's and its children's, e.g. Beam's workers, which print
    their tracebacks there themselves) goes to a temporary file, whose path it yields; the file is kept."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def replay(path: str, noise: re.Pattern = NOISE) -> None:
    """Writes the lines of `path` not matching `noise` to stderr, then deletes the file."""
    with open(path, "rb") as f:
        kept = [line for line in f.read().splitlines(keepends=True) if not noise.search(line)]
    if kept:
        sys.stderr.flush()
        os.write(2, b"".join(kept))
    os.remove(path)


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = NOISE):
    """While open, lines written to file descriptor 2 matching `noise` are dropped; the rest are written
    back, in order, when it closes."""
    try:
        with stderr_to_file() as path:
            yield
    finally:
        replay(path, noise)  # after the file has handed fd 2 back


def import_tensorflow() -> None:
    """Imports TensorFlow (once) without its start-up noise."""
    if "tensorflow" in sys.modules:
        return
    with filtered_stderr():
        import tensorflow  # noqa: F401
