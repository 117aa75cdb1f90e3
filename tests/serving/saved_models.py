"""Tiny SavedModels (tf.Module + tf.function signatures) standing in for ours in the server tests.

`affine`: y = a x + b, with a raw `serving_default`, an `examples` signature over serialized
tf.Example and a `sqrt` signature whose assertion fails on negative inputs. `rec`: a string domain
and an id sequence, with a `serving_checks.json` (domains d0 / d1, sequences of at most 4, batches of
at most 8).
"""
import tensorflow as tf

from serving import config as cfg

REC_CHECKS = cfg.ServingChecks(allowed_values={"domain": ["d0", "d1"]}, max_length={"hist_item_id": 4},
                               max_batch_size=8)


class Affine(tf.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a = tf.Variable(float(a))
        self.b = tf.Variable(float(b))

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(self, x):
        return {"y": self.a * x + self.b, "x_squared": x * x}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def examples(self, examples):
        x = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def sqrt(self, x):
        with tf.control_dependencies([tf.debugging.assert_non_negative(x, message="x must be >= 0")]):
            return {"y": tf.sqrt(x)}


class Rec(tf.Module):
    """score = sum of the ids + 100 for domain d1."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="domain"),
                                  tf.TensorSpec([None, None], tf.int64, name="hist_item_id")])
    def serve(self, domain, hist_item_id):
        bonus = tf.where(tf.equal(domain, "d1"), 100.0, 0.0)
        return {"score": tf.cast(tf.reduce_sum(hist_item_id, axis=1), tf.float32) + bonus,
                "domain_upper": tf.strings.upper(domain)}


def write_affine(path, a, b):
    module = Affine(a, b)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve.get_concrete_function(),
                                                  "examples": module.examples.get_concrete_function(),
                                                  "sqrt": module.sqrt.get_concrete_function()})


def write_rec(path):
    module = Rec()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve.get_concrete_function()})
    cfg.write_serving_checks(path, REC_CHECKS)
