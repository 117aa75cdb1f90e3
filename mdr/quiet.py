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
def filtered_stderr(noise: re.Pattern = NOISE):
    """While open, lines written to file descriptor 2 matching `noise` are dropped; the rest are written
    back, in order, when it closes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True) if not noise.search(line)]
            if kept:
                os.write(2, b"".join(kept))


def import_tensorflow() -> None:
    """Imports TensorFlow (once) without its start-up noise."""
    if "tensorflow" in sys.modules:
        return
    with filtered_stderr():
        import tensorflow  # noqa: F401
