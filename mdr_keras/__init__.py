"""mdr models: Keras layers and models of ADI, ADS and D3, their baselines, training and evaluation."""
import mdr_contract  # noqa: F401  (switches TensorFlow to Keras 2 before anything imports it)
