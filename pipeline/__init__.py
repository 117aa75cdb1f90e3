"""mdr preprocessing: the Apache Beam job from raw logs to TFRecords, vocabularies and the feature spec."""
import os

# TensorFlow Recommenders refuses Keras 3: every entry point (CLI, tests, Beam workers unpickling our
# DoFns) imports this package before TensorFlow, so the switch to Keras 2 (tf-keras) happens here.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
