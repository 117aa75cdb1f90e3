"""The two signatures of every exported model, over raw features (see `serving.export`'s docstring).

- `serving_default`: one named input per raw feature (`input_specs`: batch axis None, the record's dtype
  and width);
- `examples`: one input `examples`, serialized `tf.train.Example`s parsed in the graph with the spec.
Both call the model's `outputs(raw)` and return its named outputs.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import tensorflow as tf

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs


def input_specs(spec: fs.FeatureSpec, names: Sequence[str]) -> Dict[str, tf.TensorSpec]:
    """Named `tf.TensorSpec`s of the raw inputs `names`: batch axis None, the record's dtype and width."""
    parse = spec.tf_parse_spec(names)
    return {n: tf.TensorSpec([None] + list(parse[n].shape), parse[n].dtype, name=n) for n in names}


def signatures(outputs: Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]], specs: Dict[str, tf.TensorSpec],
               parse_spec: Dict[str, object]) -> Dict[str, Callable]:
    """`{"serving_default": fn over the named raw inputs `specs`, "examples": fn over serialized Examples
    parsed with `parse_spec`}`, both returning `outputs(raw)`."""
    names = list(specs)

    @tf.function(input_signature=list(specs.values()))
    def serve(*tensors):
        return outputs(dict(zip(names, tensors)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=artifacts.EXAMPLES_INPUT)])
    def examples(serialized):
        return outputs(tf.io.parse_example(serialized, parse_spec))

    return {artifacts.DEFAULT_SIGNATURE: serve, artifacts.EXAMPLES_SIGNATURE: examples}
