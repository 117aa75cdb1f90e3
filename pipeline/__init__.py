"""mdr preprocessing: the Apache Beam job from raw logs to TFRecords, vocabularies and the feature spec."""
import mdr_contract  # noqa: F401  (switches TensorFlow to Keras 2 before anything imports it)
