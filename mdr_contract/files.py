"""Reading and writing the small text artifacts (spec, vocabularies, metadata) on any filesystem.

Local paths use Python's own files; a path with a scheme (gs://, s3://, hdfs://) goes through
`tf.io.gfile`, imported only then, so reading a feature spec needs neither Beam nor TensorFlow.
"""
from __future__ import annotations

import os

from mdr_contract import artifacts


def _remote(path: str) -> bool:
    return "://" in path


def read_text(path: str) -> str:
    """The UTF-8 text of `path`. Raises OSError (FileNotFoundError locally) when it cannot be read."""
    if _remote(path):
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(path, "r") as f:
                return f.read()
        except tf.errors.OpError as e:
            raise OSError(f"{path}: {e.message}") from e
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` (its folder is created), replacing it."""
    if _remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)
        return
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def exists(path: str) -> bool:
    if _remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def check_complete(data_dir: str) -> None:
    """Raises FileNotFoundError unless `data_dir` is a finished preprocessing output (its `_SUCCESS`,
    written last): every reader refuses a half-written folder with this one message."""
    if not exists(os.path.join(data_dir, artifacts.SUCCESS)):
        raise FileNotFoundError(f"{data_dir} holds no complete preprocessing output (no {artifacts.SUCCESS}); "
                                "run `mdr preprocess` to completion first")
