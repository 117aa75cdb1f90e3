"""mdr serving: SavedModel export, ScaNN index, TF Serving layout, embedded gRPC server and client."""
import mdr_contract  # noqa: F401  (switches TensorFlow to Keras 2 before anything imports it)
