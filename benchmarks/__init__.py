"""mdr benchmarks: quality and performance tables (`python -m benchmarks.<name>`)."""
import mdr_contract  # noqa: F401  (switches TensorFlow to Keras 2 before anything imports it)
