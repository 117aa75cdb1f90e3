"""mdr, the application: the `mdr` command, the end-to-end demo and the run report.

The top of the house: it wires `pipeline/` (the Beam job), `mdr_keras/` (models, training) and
`serving/` (export, model server, client); none of them imports it.
"""
import mdr_contract  # noqa: F401  (switches TensorFlow to Keras 2 before anything imports it)
