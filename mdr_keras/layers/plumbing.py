"""The plumbing every layer of mdr shares: argument checks, kernel initialisation, domain routing.

One module, so that an argument is checked with the same words, a seed gives the same weights and a
domain index is read the same way in every layer:

  - argument checks (`check_int`, `check_units`, `check_real`, `check_bool`, `check_choice`,
    `check_activation`) return the normalised value or raise `ValueError("... Received: name=...")`;
  - input checks (`input_list`, `one_or_two`, `last_dim`) name the layer and the expected inputs;
  - kernels (`Kernels`, `fresh_initializer`, `per_domain`) follow one seed scheme: the n-th kernel a
    layer makes starts from its initialiser's seed + 1000 n, and slice i of a stacked (per-domain,
    per-expert) kernel from that + i;
  - domain routing (`domain_indices`, `per_domain_dense`) and `DomainBackbone` / `DomainTowersBackbone`,
    the bases of the multi-domain backbones called as `backbone([x, domain, domain_embedding])`;
  - `GenNetLayer`, the base of the layers whose parameters gen-nets generate per row (ADS).
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

# ------------------------------------------------------------------ argument checks


def is_int(value) -> bool:
    """Whether `value` is an integer (bools are not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, low: int = 1, high: Optional[int] = None, none_ok: bool = False) -> Optional[int]:
    """`value` as an int in `[low, high]` (None too with `none_ok`), else ValueError naming `name`."""
    if value is None and none_ok:
        return None
    if not is_int(value) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {'None or ' if none_ok else ''}an int {bounds}. Received: {name}={value!r}")
    return int(value)


def check_units(name: str, value, allow_empty: bool = False, none_ok: bool = False) -> Optional[List[int]]:
    """`value` (layer widths) as a list of positive ints, non-empty unless `allow_empty` (None too with
    `none_ok`), else ValueError naming `name`."""
    if value is None and none_ok:
        return None
    if isinstance(value, (list, tuple)) and (value or allow_empty) and all(is_int(u) and u > 0 for u in value):
        return [int(u) for u in value]
    raise ValueError(f"`{name}` must be a {'' if allow_empty else 'non-empty '}list of positive ints"
                     f"{' or None' if none_ok else ''}. Received: {name}={value!r}")


def check_real(name: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float between `low` and `high` (each included unless open; None: unbounded), else
    ValueError naming `name` (NaN is never in range)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if high is None:
            bounds = f"{'>' if low_open else '>='} {low}"
        else:
            bounds = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be {bounds}. Received: {name}={value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


def check_choice(name: str, value, choices: Sequence):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def check_activation(name: str, value, none_ok: bool = False):
    """The Keras activation function `value` names (None stays None with `none_ok`)."""
    if value is None and none_ok:
        return None
    try:
        return keras.activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{name}` must be {'None or ' if none_ok else ''}a Keras activation. "
                         f"Received: {name}={value!r}") from error


def serialize_activation(activation):
    """`get_config`'s value of an activation that may be None."""
    return None if activation is None else keras.activations.serialize(activation)


def kernel_config(layer) -> dict:
    """`get_config`'s entries of `layer.kernel_initializer` and `layer.kernel_regularizer` (may be None)."""
    regularizer = layer.kernel_regularizer
    return {"kernel_initializer": keras.initializers.serialize(layer.kernel_initializer),
            "kernel_regularizer": None if regularizer is None else keras.regularizers.serialize(regularizer)}


# ------------------------------------------------------------------ input checks


def input_list(layer, inputs, names: Sequence[str], optional: int = 0, what: str = "inputs") -> list:
    """`inputs` (tensors or shapes, as `what` says) as a list of `names`, the last `optional` of which
    may be left out; else ValueError naming the layer."""
    if not isinstance(inputs, (list, tuple)) or not len(names) - optional <= len(inputs) <= len(names):
        expected = " or ".join(f"[{', '.join(names[:n])}]" for n in range(len(names), len(names) - optional - 1, -1))
        raise ValueError(f"{type(layer).__name__} expects inputs {expected}. Received: {what}={inputs!r}")
    return list(inputs)


def input_shapes(layer, input_shape, names: Sequence[str], optional: int = 0) -> List[tf.TensorShape]:
    """`build`'s `input_shape` of a list of inputs `names` (see `input_list`) as `TensorShape`s."""
    return [tf.TensorShape(s) for s in input_list(layer, input_shape, names, optional, what="input_shape")]


def one_or_two(inputs, expected: str, shapes: bool = False):
    """`(first, second)` of inputs that are one tensor (second None) or a pair, `expected` naming them
    (e.g. "[x, domain]"). With `shapes`, `inputs` is `build`'s `input_shape` and the result `TensorShape`s."""
    pair = isinstance(inputs, (list, tuple))
    if shapes:  # one shape may itself be a list of dims: a pair is a list of shapes
        pair = pair and bool(inputs) and isinstance(inputs[0], (tf.TensorShape, list, tuple))
    if not pair:
        return (tf.TensorShape(inputs) if shapes else inputs), None
    if len(inputs) != 2:
        received = f"input_shape={inputs}" if shapes else f"{len(inputs)} inputs"
        raise ValueError(f"Expected inputs {expected}. Received: {received}")
    return tuple(tf.TensorShape(s) for s in inputs) if shapes else tuple(inputs)


def last_dim(name: str, shape, layout: str) -> int:
    """The last dim of input `name`'s `shape`, which must have the rank of `layout` (e.g. "[B, T, d]")
    and a known last dim, else ValueError."""
    shape = tf.TensorShape(shape)
    if shape.rank != layout.count(",") + 1 or shape[-1] is None:
        raise ValueError(f"`{name}` must be {layout} with a known last dim. Received: {name}.shape={shape}")
    return int(shape[-1])


# ------------------------------------------------------------------ kernels
SEED_STRIDE = 1000  # seeds of a layer's successive kernels; slices of one kernel take the seeds in between


def reseeded(initializer, offset: int):
    """A new instance of a Keras initialiser, its seed (when it has one) moved by `offset`.

    A Keras initialiser instance returns the same values on every call, which would start weights of
    one shape from identical values; an unseeded copy draws its own seed (from the global seed set by
    `keras.utils.set_random_seed`) on its first call. A plain function is returned as is: it draws anew
    on every call.
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    config = initializer.get_config()
    if config.get("seed") is not None:
        config["seed"] = config["seed"] + offset
    return type(initializer).from_config(config)


def fresh_initializer(initializer, n: int):
    """The copy of `initializer` for a layer's n-th kernel: seed + 1000 n when seeded."""
    return reseeded(initializer, SEED_STRIDE * n)


def per_domain(initializer, stacked_axes: int = 1):
    """An initialiser of a stacked kernel: each slice `shape[stacked_axes:]` is initialised on its own,
    slice i (in row-major order of the stacked axes) by a copy of `initializer` with seed + i.

    The stacked (domain, expert) axes then do not count in the fan-in / fan-out of variance-scaling
    initialisers, and the slices do not start equal.
    """

    def init(shape, dtype=None, **kwargs):
        shape = tuple(int(s) for s in shape)
        count = int(np.prod(shape[:stacked_axes]))
        slices = [reseeded(initializer, i)(shape[stacked_axes:], dtype=dtype) for i in range(count)]
        return tf.reshape(tf.stack(slices), shape)

    return init


class Kernels:
    """Makes a layer's kernels, the n-th (n = 1, 2, ...) from `fresh_initializer(initializer, n)`.

    Created in `build`, it numbers the kernels in the order they are made, so a seeded initialiser
    gives every kernel (and, `per_domain`, every slice of a stacked kernel) its own values.

    Args:
        layer: the layer whose `add_weight` makes the kernels.
        initializer: the layer's kernel initialiser.
        regularizer: the kernels' regulariser, or None.
    """

    def __init__(self, layer, initializer, regularizer=None):
        self._layer = layer
        self._initializer = initializer
        self._regularizer = regularizer
        self._made = 0

    def __call__(self, name: str, shape, stacked_axes: int = 0, initializer=None):
        """A kernel `shape` named `name`; `stacked_axes` leading axes stack slices initialised on their
        own (`per_domain`); `initializer` replaces the layer's for this kernel (it still counts)."""
        self._made += 1
        init = fresh_initializer(self._initializer if initializer is None else initializer, self._made)
        if stacked_axes:
            init = per_domain(init, stacked_axes)
        return self._layer.add_weight(name=name, shape=shape, initializer=init, regularizer=self._regularizer)


# ------------------------------------------------------------------ domain routing


def domain_indices(domain, num_domains: int):
    """int32 [B] domain indices from a [B] or [B, 1] tensor, asserted to lie in [0, num_domains)."""
    domain = tf.convert_to_tensor(domain)
    if domain.shape.rank == 2:
        domain = tf.squeeze(domain, axis=-1)
    elif domain.shape.rank != 1:
        raise ValueError(f"`domain` must have shape [B] or [B, 1]. Received: domain.shape={domain.shape}")
    domain = tf.cast(domain, tf.int32)
    checks = [tf.debugging.assert_non_negative(domain, message="domain index < 0"),
              tf.debugging.assert_less(domain, num_domains, message="domain index >= num_domains")]
    with tf.control_dependencies(checks):
        return tf.identity(domain)


def per_domain_dense(h, kernel, bias, index):
    """Row b of `h` [B, in] through the FC layer of domain `index[b]` (`kernel` [D, in, out], `bias`
    [D, out]): all D layers at once ([B, D, out]), then each row keeps its own domain's slice.

    D x the FLOPs of one layer, but no ragged partitioning and no per-row copy of the kernels; other
    domains' slices get exactly zero gradient from the row.
    """
    return tf.gather(tf.einsum("bi,dio->bdo", h, kernel) + bias, index, axis=1, batch_dims=1)


BACKBONE_INPUTS = ("x", "domain", "domain_embedding")  # what every backbone is called on


class DomainBackbone(keras.layers.Layer):
    """Base of the multi-domain backbones (Shared-Bottom, MMoE, PLE, Cross-Stitch, STAR).

    Holds what they share: the call on `[x, domain, domain_embedding]`, hidden layers FC -> ReLU ->
    dropout, an optional output activation, the kernel initialiser and regulariser, and their
    `get_config` entries. A subclass makes its weights in `build` (F from
    `self._features(input_shape)`), computes in `call` and names its output width `output_dim`.

    Args:
        num_domains: number of domains D (>= 1); domain indices are in `[0, D)`.
        dropout: dropout rate in [0, 1) after every hidden (ReLU) layer. Default 0.
        output_activation: optional activation of the output layer. Default None (linear).
        kernel_initializer: initialiser of the kernels, applied to each slice (domain, expert) of a
            stacked kernel on its own. Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of the kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[x, domain, domain_embedding]`: `x` float `[B, F]`, the concatenated feature
            embeddings (the domain embedding is one of them); `domain` int `[B]` or `[B, 1]` in
            `[0, num_domains)` (out-of-range values fail an assertion, outside XLA);
            `domain_embedding` float `[B, e]`, the domain-indicator embedding.
        training: Python bool or bool tensor, the dropout switch.

    Returns:
        Float `[B, output_dim]`.
    """

    def __init__(self, num_domains, dropout=0.0, output_activation=None, kernel_initializer="glorot_uniform",
                 kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = check_int("num_domains", num_domains)
        self.dropout = check_real("dropout", dropout, 0, 1, high_open=True)
        self.output_activation = check_activation("output_activation", output_activation, none_ok=True)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self._dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    @property
    def output_dim(self) -> int:
        raise NotImplementedError

    def _features(self, input_shape) -> int:
        """F, the features of `x`, from `build`'s `input_shape` (of the list `[x, domain, domain_embedding]`)."""
        return last_dim("x", input_shapes(self, input_shape, BACKBONE_INPUTS)[0], "[batch, features]")

    def _hidden(self, z, training):
        """A hidden layer's activation: ReLU, then dropout when set."""
        h = tf.nn.relu(z)
        return self._dropout(h, training=training) if self.dropout else h

    def _output(self, h):
        return h if self.output_activation is None else self.output_activation(h)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([tf.TensorShape(input_shape[0])[0], self.output_dim])

    def get_config(self):
        config = super().get_config()
        config.update({"num_domains": self.num_domains, "dropout": self.dropout,
                       "output_activation": serialize_activation(self.output_activation), **kernel_config(self)})
        return config


class DomainTowersBackbone(DomainBackbone):
    """A `DomainBackbone` ending in one tower per domain (Shared-Bottom, MMoE, PLE).

    Each row goes through its own domain's tower only: the towers are stacked kernels `[D, in, out]`,
    a layer is computed for all D at once and each row keeps its domain's slice (`per_domain_dense`),
    so tower `d` gets exactly zero gradient from other domains' rows. A subclass builds its shared
    part, then `self._build_towers(kernel, fan_in)`, and ends `call` with `self._towers(h, index, training)`.

    Args:
        num_domains: number of domains D (>= 1).
        tower_units: widths of each domain's tower; the last layer is linear (or `output_activation`)
            and its width is the output dim. Default `(32,)`.
        **kwargs: the other arguments of `DomainBackbone`.

    Call arguments:
        inputs, training: as `DomainBackbone`'s.
    """

    def __init__(self, num_domains, tower_units=(32,), **kwargs):
        super().__init__(num_domains, **kwargs)
        self.tower_units = check_units("tower_units", tower_units)

    @property
    def output_dim(self):
        return self.tower_units[-1]

    def _build_towers(self, kernel: Kernels, fan_in: int):
        """The towers' weights `tower_kernels` / `tower_biases` over `fan_in` inputs, kernels from `kernel`."""
        D = self.num_domains
        self.tower_kernels, self.tower_biases = [], []
        for i, units in enumerate(self.tower_units):
            self.tower_kernels.append(kernel(f"tower_kernel_{i}", (D, fan_in, units), stacked_axes=1))
            self.tower_biases.append(self.add_weight(name=f"tower_bias_{i}", shape=(D, units), initializer="zeros"))
            fan_in = units

    def _towers(self, h, index, training):
        """Each row of `h` through its own domain's tower (ReLU hidden layers), then the output activation."""
        last = len(self.tower_kernels) - 1
        for i, (kernel, bias) in enumerate(zip(self.tower_kernels, self.tower_biases)):
            h = per_domain_dense(h, kernel, bias, index)
            if i < last:
                h = self._hidden(h, training)
        return self._output(h)

    def get_config(self):
        config = super().get_config()
        config["tower_units"] = list(self.tower_units)
        return config


# ------------------------------------------------------------------ gen-nets
GEN_NET_WEIGHTS = ("hidden_kernel", "hidden_bias", "output_kernel", "output_bias")


class GenNetLayer(keras.layers.Layer):
    """Base of the layers whose parameters gen-nets generate per row (ADS's PSRG and PCRG).

    A gen-net is the MLP `act(x W_1 + b_1) W_2 + b_2` of hidden width `hidden_units`; its output kernel
    starts at `output_initializer` (zeros by default, so the generated parameters start constant and
    the layer as its "w/o" ablation). `self._build_gen_net(kernel, prefix, fan_in, fan_out)` makes the
    weights `<prefix>hidden_kernel`, `<prefix>hidden_bias`, `<prefix>output_kernel`, `<prefix>output_bias`
    (attributes of these names: the checkpoint's), `self._gen_net(prefix, x)` runs it.

    Args:
        hidden_units: hidden width d_h of the gen-nets (> 0). Default 64.
        activation: their hidden activation. Default `"relu"`.
        kernel_initializer: initialiser of their hidden kernels. Default `"glorot_uniform"`.
        output_initializer: initialiser of their output kernels. Default `"zeros"`.
        kernel_regularizer: optional regulariser of their kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(self, hidden_units=64, activation="relu", kernel_initializer="glorot_uniform",
                 output_initializer="zeros", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = check_int("hidden_units", hidden_units)
        self.activation = check_activation("activation", activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def _build_gen_net(self, kernel: Kernels, prefix: str, fan_in: int, fan_out: int):
        """The weights of gen-net `prefix` from `fan_in` to `fan_out` units, its kernels from `kernel`."""
        d_h = self.hidden_units

        def bias(name, shape):
            return self.add_weight(name=prefix + name, shape=shape, initializer="zeros")

        setattr(self, prefix + "hidden_kernel", kernel(prefix + "hidden_kernel", (fan_in, d_h)))
        setattr(self, prefix + "hidden_bias", bias("hidden_bias", (d_h,)))
        setattr(self, prefix + "output_kernel", kernel(prefix + "output_kernel", (d_h, fan_out),
                                                       initializer=self.output_initializer))
        setattr(self, prefix + "output_bias", bias("output_bias", (fan_out,)))

    def _gen_net(self, prefix: str, x):
        """Gen-net `prefix` on `x` [B, fan_in]: `act(x W_1 + b_1) W_2 + b_2`, [B, fan_out]."""
        hidden_kernel, hidden_bias, output_kernel, output_bias = (getattr(self, prefix + n) for n in GEN_NET_WEIGHTS)
        return tf.matmul(self.activation(tf.matmul(x, hidden_kernel) + hidden_bias), output_kernel) + output_bias

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_units": self.hidden_units, "activation": keras.activations.serialize(self.activation),
                       "output_initializer": keras.initializers.serialize(self.output_initializer),
                       **kernel_config(self)})
        return config
