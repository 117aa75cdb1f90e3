"""Checks every Keras layer of mdr_keras gets: config round trip, and save / reload / same output
in a fresh process (so nothing survives from the saving process but the files)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

_RELOAD = textwrap.dedent("""
    import importlib, json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import mdr_contract  # Keras 2 before TensorFlow
    import numpy as np, tf_keras
    args = json.loads(sys.argv[1])
    for m in args["modules"]:
        importlib.import_module(m)  # registers the layers' serializable names
    model = tf_keras.models.load_model(args["model"])
    data = np.load(args["inputs"], allow_pickle=False)
    inputs = {k: data[k] for k in data.files}
    if list(inputs) == ["__single__"]:
        inputs = inputs["__single__"]
    out = model(inputs, training=False)
    if isinstance(out, dict):
        np.savez(args["outputs"], **{k: np.asarray(v) for k, v in out.items()})
    else:
        np.savez(args["outputs"], __single__=np.asarray(out))
""")


def assert_config_round_trip(layer):
    """`from_config(get_config())` builds a layer with the same config."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config, (clone.get_config(), config)
    json.dumps(config)  # serializable as JSON, as Keras writes it
    return clone


def _as_numpy(out):
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    return {"__single__": np.asarray(out)}


def _loadable(v):
    a = np.asarray(v)
    return a.astype("S") if a.dtype == object else a


def assert_same_after_reload_in_fresh_process(model, inputs, tmp_path, modules, atol=1e-5):
    """Saves `model`, reloads it in a new Python process and checks the outputs on `inputs` agree."""
    expected = _as_numpy(model(inputs, training=False))
    model_dir = os.path.join(str(tmp_path), "saved_model")
    model.save(model_dir)
    in_path = os.path.join(str(tmp_path), "inputs.npz")
    out_path = os.path.join(str(tmp_path), "outputs.npz")
    arrays = inputs if isinstance(inputs, dict) else {"__single__": inputs}
    # String tensors come back from TF as object arrays; fixed-width bytes load without pickle.
    np.savez(in_path, **{k: _loadable(v) for k, v in arrays.items()})
    args = json.dumps({"modules": list(modules), "model": model_dir, "inputs": in_path, "outputs": out_path})
    done = subprocess.run([sys.executable, "-c", _RELOAD, args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out_path)
    assert sorted(got.files) == sorted(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, atol=atol, err_msg=k)


# ------------------------------------------------------------------ multi-domain backbones
def backbone_inputs(batch, features, emb_dim, num_domains, seed=0):
    """`[x, domain, domain_embedding]` of a backbone: domains 0, 1, ..., D - 1, 0, ..., one embedding per domain."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, features)).astype(np.float32)
    domain = (np.arange(batch) % num_domains).astype(np.int32)
    emb = rng.normal(size=(num_domains, emb_dim)).astype(np.float32)[domain]
    return [x, domain, emb]


def assert_backbone_rejects_bad_inputs(make):
    """The input checks every backbone shares: `make()` builds a fresh 2-domain backbone.

    A missing domain embedding or an `x` that is not [B, F] is a one-line ValueError before any
    weight is made; a domain id out of range fails in the lookup, not silently."""
    import pytest
    import tensorflow as tf

    x, domain, emb = backbone_inputs(2, 4, 2, 2)
    with pytest.raises(ValueError, match="Received:"):  # the domain embedding is missing
        make()([x, domain])
    with pytest.raises(ValueError, match="Received:"):  # x must be [B, F]
        make()([x[:, :, None], domain, emb])
    with pytest.raises(tf.errors.InvalidArgumentError):  # domain 2 of 2
        make()([x, np.array([0, 2]), emb])


def set_weights_by_name(layer, values):
    """`layer.set_weights` with the values given by short weight name (`.../name:0` -> `name`)."""
    names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
    assert sorted(names) == sorted(values), (names, sorted(values))
    layer.set_weights([np.asarray(values[n], np.float32).reshape(w.shape) for n, w in zip(names, layer.weights)])


def randomize_weights(layer, seed=0, scale=0.7):
    """Seeded normal values for all of `layer`'s trainable weights (deterministic tests of random weights)."""
    rng = np.random.default_rng(seed)
    for var in layer.trainable_weights:
        var.assign(rng.normal(scale=scale, size=var.shape))


def assert_domain_routing(layer, inputs, variables, domain=1, training=True):
    """A loss on the rows of `domain` only gives exactly zero gradient to the other domains' slices (axis 0)
    of `variables`, and a non-zero one to its own."""
    import tensorflow as tf

    rows = np.asarray(inputs[1]).reshape(-1) == domain
    with tf.GradientTape() as tape:
        out = layer(inputs, training=training)
        loss = tf.reduce_sum(tf.boolean_mask(out, rows) ** 2)
    assert variables
    for var, grad in zip(variables, tape.gradient(loss, variables)):
        g = tf.convert_to_tensor(grad).numpy()
        others = [d for d in range(g.shape[0]) if d != domain]
        assert np.abs(g[others]).max() == 0.0, var.name
        assert np.abs(g[domain]).max() > 0.0, var.name


def backbone_model(layers, features, emb_dim):
    """A functional Model of backbone `layers` (one or a dict of them) on inputs x / domain / domain_embedding."""
    import tf_keras as keras

    inputs = {"x": keras.Input((features,), name="x"), "domain": keras.Input((), dtype="int32", name="domain"),
              "domain_embedding": keras.Input((emb_dim,), name="domain_embedding")}
    args = [inputs["x"], inputs["domain"], inputs["domain_embedding"]]
    outputs = {k: v(args) for k, v in layers.items()} if isinstance(layers, dict) else layers(args)
    return keras.Model(inputs, outputs)
