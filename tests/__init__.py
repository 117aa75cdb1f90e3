import mdr_contract  # noqa: F401  (switches TensorFlow to Keras 2 before any test imports it)
