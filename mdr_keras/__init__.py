"""mdr models: Keras layers and models of ADI, ADS and D3, their baselines, training and evaluation."""
import os

# TensorFlow Recommenders refuses Keras 3: every entry point (CLI, tests, Beam workers unpickling our
# DoFns) imports this package before TensorFlow, so the switch to Keras 2 (tf-keras) happens here.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
