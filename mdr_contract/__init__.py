"""mdr's contract between the stages: the feature spec and the names of every artifact.

`pipeline/` writes what this package names, `mdr_keras/` trains on it, `serving/` exports and serves
it, and the application (`mdr/`) wires them; each imports this package and none of the others
needs to know how another writes its files.

Importing this package is also the one place that switches TensorFlow to Keras 2: TensorFlow
Recommenders refuses Keras 3, and every entry point (the CLI, the tests, the benchmarks, Beam workers
unpickling our DoFns) passes through here, through its own package's `__init__`, before TensorFlow
is imported.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
