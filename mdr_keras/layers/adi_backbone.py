"""The backbone of one ADI tower: DIAL, K shared + D domain-specific networks with DSBN, fusion layer and
domain-specific forward network (ADI eq. 8-18, 20-26)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domain_attention import DomainInterestAdaptation
from mdr_keras.layers.domain_batch_norm import DomainBatchNormalization
from mdr_keras.layers.plumbing import (BACKBONE_INPUTS, Kernels, check_activation, check_bool, check_choice,
                                       check_int, check_real, check_units, domain_indices, input_list, input_shapes,
                                       kernel_config, last_dim, per_domain_dense)

NETWORK_FUSIONS = ("concat", "sum", "star")  # how the fusion layer combines E_spec and E_shared (eq. 11-17)
ATTENTIONS = (None, "linear", "attention", "se")
PLACEMENTS = ("per_network", "global", "per_expert")
FORWARD_SHARING = ("specific", "star")  # the forward network: D independent MLPs, or STAR FCs (shared * domain)


@keras.utils.register_keras_serializable(package="mdr")
class ADIBackbone(keras.layers.Layer):
    """Backbone of one ADI tower (user or item), from the feature embeddings to the tower output.

    For a row of domain `d` with feature embeddings `x` (eq. 7) and domain-indicator embedding
    `f = f_domain`:

    1. Domain interest adaptation (DIAL, eq. 21-26, `DomainInterestAdaptation`) re-weights the
       feature embeddings `x` (see "Placements" below); skipped when `attention=None`.
    2. K shared networks `MLP_shared^k` (every row goes through all of them) mixed by a gate over
       the domain embedding, eq. 8-9: `alpha = softmax(f W_gate + b_gate)` (K logits),
       `E_shared = sum_k alpha_k MLP_shared^k(x)`. Eq. 8 normalises the raw linear outputs by
       their sum, which can divide by ~0 or give negative weights; as in the implementer notes
       (ambiguity 1) the K logits go through a softmax instead (MMoE / PLE). With K = 1,
       `alpha = 1`. Since `f` depends only on the domain, `alpha` is a learned K-vector per domain.
    3. D domain-specific networks, eq. 10: `E_spec = MLP_spec^(d)(x)`, each row through its own
       domain's network only.
    4. Fusion layer (`fusion`):
       - `"concat"` (eq. 11-13, ADI's choice): `beta_1 = sigmoid(<w_spec^(d), f>)`,
         `beta_2 = sigmoid(<w_shared^(d), f>)` (one scalar per row, per-domain weights, no bias
         as written), `E_fusion = concat(beta_1 E_spec | beta_1 E_spec * beta_2 E_shared |
         beta_2 E_shared)`, width `3 h`.
       - `"sum"` (eq. 14-15, MMoE-like gate): `a = sigmoid(<w_gate^(d), f> + b_gate)` (one bias
         shared by the domains, as written), `E_fusion = a E_spec + (1 - a) E_shared`, width `h`.
       - `"star"` (Network-Mul, eq. 16-17, = STAR's topology FCN): no separate shared / specific
         networks and no gate; a single MLP (widths `shared_units`) whose every layer is a STAR FC
         `(W_shared * W_spec^(d)) x + b_shared + b_spec^(d)`. The per-domain factors start at ones
         / zeros (the shared network), as in STAR. Needs `num_shared=1` ("STAR only has one shared
         network") and `specific_units` None or equal to `shared_units`.
    5. Domain-specific forward network, eq. 18: `E = FC_forward^(d)(E_fusion)`, a per-domain MLP
       with widths `forward_units`; the last layer is linear (the tower output feeds an inner
       product), so the output has `forward_units[-1]` dims.

    Every hidden layer is `FC -> [DSBN] -> activation`: all layers of the shared / specific / STAR
    networks and all but the last layer of the forward network. With `dsbn=True` the
    normalisation is `DomainBatchNormalization` (eq. 20: per-domain statistics and scale/shift),
    placed after the FC and before the activation (implementer notes sec. 3; the K shared experts
    of a layer share one DSBN instance over their concatenated units, which is the same as one
    DSBN per expert since statistics are per unit); with `dsbn=False` there is no normalisation.

    Per-domain networks (specific, forward, STAR) are stacked kernels `[D, in, out]`. A layer is
    computed for all D domains at once (`einsum` to `[B, D, out]`) and every row keeps its own
    domain's slice (`gather` with `batch_dims=1`) before the next layer: D x the FLOPs of one
    network, no ragged partitioning, no per-row copy of the kernels, XLA-friendly; D is small
    (2-10). Rows of domain `d` only reach the weights of domain `d` (other slices get an exactly
    zero gradient), and as the DSBN statistics are per domain, no domain's rows affect another
    domain's network. The K shared experts are likewise stacked `[K, in, out]`.

    Placements of the adaptation layer (`attention_placement`, ADI sec. 5.3.4 / Table 8 /
    Fig. 4). ADI's DIAL re-weights the *feature embeddings* ("re-weight feature embeds at the
    sample domain-level rather than the network-level", Fig. 5 shows scores per input feature),
    so every instance acts on the backbone's input `x`, never on hidden outputs:
      - `"per_network"` = 3-SE (ADI's choice; 3 = D = 3 domains): one `DomainInterestAdaptation`
        with per-domain weights (D blocks selected by the domain indicator) in front of the whole
        backbone; all shared and specific networks read its output. Key `"dial"`.
      - `"global"` = 1-SE: one instance with `shared_across_domains=True` (a single, universal
        block) in front of the backbone. Key `"dial_global"`.
      - `"per_expert"` = 4-SE (D + K = 4 blocks for D = 3, K = 1): a block inside each network
        ("SE-Block is added into each expert network"): one `shared_across_domains=True` instance
        in front of each shared expert k (key `"dial_shared_<k>"`) and one per-domain instance in
        front of the specific networks (key `"dial_specific"`: domain d's block is specific network
        d's own, since only domain-d rows enter network d). Not available with `fusion="star"`
        (one network).

    Args:
        num_domains: number of domains D (>= 1); domain indices are in `[0, D)`.
        num_shared: number of shared networks K (>= 1). Default 1 (ADI-SE; ADI-SE(MAX) uses K > 1).
        shared_units: widths of the layers of each shared network (and of the STAR network);
            the last one is `h`. Default `(64, 32)`.
        specific_units: widths of the layers of each domain-specific network; its last width must
            equal `shared_units[-1]` for `"concat"` / `"sum"` fusion. Default None: `shared_units`.
        forward_units: widths of the domain-specific forward network; the last layer is linear and
            its width is the output dim. Default `(64, 32)`.
        forward_sharing: `"specific"` (default, eq. 18 as written: D independent forward networks, each
            trained by its own domain's rows only) or `"star"` (every forward layer a STAR FC
            `(W_shared * W^(d)) h + b_shared + b^(d)`, the domain factors starting at ones / zeros: still
            one network per domain, but all domains train the shared factor). The layer's defaults are
            the paper's; the retrieval model's (`RetrievalConfig`) are `"star"`, one forward layer and
            `input_norm=True`, measured better on MovieLens-1M (see there).
        fusion: `"concat"` (default), `"sum"` or `"star"`.
        attention: adaptation mode of `DomainInterestAdaptation`: `"se"` (default), `"attention"`,
            `"linear"`, or None (no adaptation layer).
        attention_placement: `"per_network"` (3-SE, default), `"global"` (1-SE) or `"per_expert"`
            (4-SE); see above. Ignored when `attention=None`.
        num_fields: number of feature fields N that the F input units split into (for the
            per-field scores of `"attention"` / `"se"`); must divide F. Default None: one field per
            unit. Pass the tower's number of features (F = N * e) for the paper's setting.
        attention_reduction: SE reduction ratio (hidden size `max(1, N // reduction)`). Default 4.
        dsbn: if True (default), `DomainBatchNormalization` after every hidden FC; else none.
        input_norm: if True, a `DomainBatchNormalization` of the input `x` (per-domain statistics and
            scale / shift, as STAR's partitioned normalization) before the adaptation layer and the
            networks. Default False (the paper normalises hidden layers only).
        dropout: dropout rate on the fused representation, before the forward network (training only).
            Default 0.
        bn_momentum: DSBN moving-average momentum in [0, 1]. Default 0.99.
        bn_epsilon: DSBN epsilon (> 0). Default 1e-3.
        activation: activation of the hidden layers. Default `"relu"`.
        kernel_initializer: initialiser of the FC kernels and of the gate / fusion kernels, applied
            to each domain's (expert's) slice on its own. Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of those kernels (also passed to the adaptation
            layers).
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[x, domain, domain_embedding]`: `x` float `[B, F]`, the concatenated feature
            embeddings (eq. 7); `domain` int `[B]` or `[B, 1]` with values in `[0, num_domains)`
            (out-of-range values fail an assertion, outside XLA); `domain_embedding` float
            `[B, e_d]`, the domain-indicator embedding `f_domain` (given by the tower).
        training: Python bool or bool tensor, passed to the DSBN layers (batch statistics and
            moving-statistic updates in training). Defaults to the Keras learning phase.

    Returns:
        The tower output `E`, float `[B, forward_units[-1]]` (eq. 18).

    Also: `gate_weights(domain_embedding)` gives the shared-network gate `alpha` `[B, K]` (eq. 8;
    ones `[B, 1]` with `"star"`), `domain_attention_weights(inputs)` a dict of the `[B, F]`
    weights of every adaptation instance (ADI Fig. 5 heatmaps).

    Reference:
        Jiang et al., "Adaptive Domain Interest Network for Multi-domain Recommendation", CIKM 2022:
        sec. 4.1 eq. 7 (input), eq. 8-9 (gated shared networks), eq. 10 (domain-specific networks),
        eq. 11-13 (CONCAT fusion), eq. 14-15 (SUM), eq. 16-17 (Network-Mul / STAR), eq. 18 (forward
        network); sec. 4.2 eq. 19-20 (DSBN), eq. 21-26 (DIAL); sec. 5.3.1 (fusion variants),
        sec. 5.3.4 / Table 8 (1-SE, 3-SE, 4-SE).
    """

    def __init__(self, num_domains, num_shared=1, shared_units=(64, 32), specific_units=None,
                 forward_units=(64, 32), forward_sharing="specific", fusion="concat", attention="se", attention_placement="per_network",
                 num_fields=None, attention_reduction=4, dsbn=True, input_norm=False, dropout=0.0, bn_momentum=0.99,
                 bn_epsilon=1e-3, activation="relu", kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = check_int("num_domains", num_domains)
        self.num_shared = check_int("num_shared", num_shared)
        self.shared_units = check_units("shared_units", shared_units)
        self.specific_units = check_units("specific_units", specific_units, none_ok=True)
        self.forward_units = check_units("forward_units", forward_units)
        self.forward_sharing = check_choice("forward_sharing", forward_sharing, FORWARD_SHARING)
        self.fusion = check_choice("fusion", fusion, NETWORK_FUSIONS)
        self.attention = check_choice("attention", attention, ATTENTIONS)
        self.attention_placement = check_choice("attention_placement", attention_placement, PLACEMENTS)
        self.num_fields = check_int("num_fields", num_fields, none_ok=True)
        self.attention_reduction = check_int("attention_reduction", attention_reduction)
        self.dsbn = check_bool("dsbn", dsbn)
        self.input_norm = check_bool("input_norm", input_norm)
        self.dropout = check_real("dropout", dropout, 0, 1, high_open=True)
        self._dropout = (keras.layers.Dropout(self.dropout, name="fused_dropout", dtype=self.dtype_policy)
                         if self.dropout else None)
        self.bn_momentum = check_real("bn_momentum", bn_momentum, 0, 1)
        self.bn_epsilon = check_real("bn_epsilon", bn_epsilon, 0, low_open=True)
        self.activation = check_activation("activation", activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        spec = self._spec_units = self.shared_units if self.specific_units is None else self.specific_units
        if fusion == "star":
            if num_shared != 1:
                raise ValueError("`fusion='star'` (Network-Mul) has a single shared network: `num_shared` must "
                                 f"be 1. Received: num_shared={num_shared!r}")
            if spec != self.shared_units:
                raise ValueError("`fusion='star'` uses one network of widths `shared_units`: `specific_units` "
                                 f"must be None or equal to them. Received: specific_units={specific_units!r}")
            if attention is not None and attention_placement == "per_expert":
                raise ValueError("`fusion='star'` has no separate expert networks for `per_expert` (4-SE) "
                                 f"adaptation. Received: attention_placement={attention_placement!r}")
        elif spec[-1] != self.shared_units[-1]:
            raise ValueError(f"`fusion={fusion!r}` combines E_spec and E_shared element-wise: the last widths of "
                             "`specific_units` and `shared_units` must be equal. "
                             f"Received: shared_units={shared_units!r}, specific_units={specific_units!r}")

        # Adaptation layers (DIAL), keyed as in `domain_attention_weights`.
        def dial(key, shared):
            return DomainInterestAdaptation(
                self.num_domains, mode=attention, num_fields=self.num_fields, reduction=self.attention_reduction,
                shared_across_domains=shared, kernel_regularizer=self.kernel_regularizer, name=key,
                dtype=self.dtype_policy)

        self._dials = {}
        if attention is not None:
            if attention_placement == "per_network":
                self._dials["dial"] = dial("dial", False)
            elif attention_placement == "global":
                self._dials["dial_global"] = dial("dial_global", True)
            else:
                for k in range(self.num_shared):
                    self._dials[f"dial_shared_{k}"] = dial(f"dial_shared_{k}", True)
                self._dials["dial_specific"] = dial("dial_specific", False)

        # DSBN after every hidden FC.
        def bn(name):
            return DomainBatchNormalization(self.num_domains, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                            name=name, dtype=self.dtype_policy) if dsbn else None

        self._input_bn = (DomainBatchNormalization(self.num_domains, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                                   name="input_bn", dtype=self.dtype_policy) if input_norm else None)
        if fusion == "star":
            self._star_bns = [bn(f"star_bn_{i}") for i in range(len(shared_units))]
        else:
            self._shared_bns = [bn(f"shared_bn_{i}") for i in range(len(shared_units))]
            self._specific_bns = [bn(f"specific_bn_{i}") for i in range(len(spec))]
        self._forward_bns = [bn(f"forward_bn_{i}") for i in range(len(forward_units) - 1)]

    # ------------------------------------------------------------------ build
    def _bias(self, name, shape):
        return self.add_weight(name=name, shape=shape, initializer="zeros")

    def build(self, input_shape):
        x_shape, domain_shape, emb_shape = input_shapes(self, input_shape, BACKBONE_INPUTS)
        features = last_dim("x", x_shape, "[batch, features]")
        if domain_shape.rank not in (1, 2) or (domain_shape.rank == 2 and domain_shape[-1] not in (1, None)):
            raise ValueError(f"`domain` must be [batch] or [batch, 1]. Received: domain.shape={domain_shape}")
        emb_dim = last_dim("domain_embedding", emb_shape, "[batch, e_d]")
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)
        if self.num_fields is not None and features % self.num_fields:
            raise ValueError(f"`num_fields` must divide the features of x ({features}). "
                             f"Received: num_fields={self.num_fields}")
        D, K = self.num_domains, self.num_shared

        def bn_build(layer, units):
            if layer is not None:
                with tf.name_scope(layer.name):
                    layer.build([tf.TensorShape([None, units]), tf.TensorShape([None])])

        bn_build(self._input_bn, features)
        for dial in self._dials.values():
            with tf.name_scope(dial.name):  # as Keras does for a sublayer built on its first call
                dial.build([tf.TensorShape([None, features]), tf.TensorShape([None])])

        if self.fusion == "star":
            self.star_shared_kernels, self.star_shared_biases = [], []
            self.star_specific_kernels, self.star_specific_biases = [], []
            fan_in = features
            for i, units in enumerate(self.shared_units):
                self.star_shared_kernels.append(kernel(f"star_shared_kernel_{i}", (fan_in, units)))
                self.star_shared_biases.append(self._bias(f"star_shared_bias_{i}", (units,)))
                self.star_specific_kernels.append(self.add_weight(  # factors of the shared kernel, from ones
                    name=f"star_specific_kernel_{i}", shape=(D, fan_in, units), initializer="ones",
                    regularizer=self.kernel_regularizer))
                self.star_specific_biases.append(self._bias(f"star_specific_bias_{i}", (D, units)))
                bn_build(self._star_bns[i], units)
                fan_in = units
            fusion_dim = fan_in
        else:
            self.gate_kernel = kernel("gate_kernel", (emb_dim, K))
            self.gate_bias = self._bias("gate_bias", (K,))
            self.shared_kernels, self.shared_biases = [], []
            fan_in = features
            for i, units in enumerate(self.shared_units):
                self.shared_kernels.append(kernel(f"shared_kernel_{i}", (K, fan_in, units), stacked_axes=1))
                self.shared_biases.append(self._bias(f"shared_bias_{i}", (K, units)))
                bn_build(self._shared_bns[i], K * units)
                fan_in = units
            self.specific_kernels, self.specific_biases = [], []
            fan_in = features
            for i, units in enumerate(self._spec_units):
                self.specific_kernels.append(kernel(f"specific_kernel_{i}", (D, fan_in, units), stacked_axes=1))
                self.specific_biases.append(self._bias(f"specific_bias_{i}", (D, units)))
                bn_build(self._specific_bns[i], units)
                fan_in = units
            h = fan_in
            if self.fusion == "concat":
                self.fusion_spec_kernel = kernel("fusion_spec_kernel", (D, emb_dim), stacked_axes=1)
                self.fusion_shared_kernel = kernel("fusion_shared_kernel", (D, emb_dim), stacked_axes=1)
                fusion_dim = 3 * h
            else:
                self.fusion_gate_kernel = kernel("fusion_gate_kernel", (D, emb_dim), stacked_axes=1)
                self.fusion_gate_bias = self._bias("fusion_gate_bias", (1,))
                fusion_dim = h
        self.forward_kernels, self.forward_biases = [], []
        self.forward_shared_kernels, self.forward_shared_biases = [], []
        fan_in = fusion_dim
        for i, units in enumerate(self.forward_units):
            if self.forward_sharing == "star":
                self.forward_shared_kernels.append(kernel(f"forward_shared_kernel_{i}", (fan_in, units)))
                self.forward_shared_biases.append(self._bias(f"forward_shared_bias_{i}", (units,)))
                self.forward_kernels.append(self.add_weight(  # factors of the shared kernel, from ones
                    name=f"forward_kernel_{i}", shape=(D, fan_in, units), initializer="ones",
                    regularizer=self.kernel_regularizer))
            else:
                self.forward_kernels.append(kernel(f"forward_kernel_{i}", (D, fan_in, units), stacked_axes=1))
            self.forward_biases.append(self._bias(f"forward_bias_{i}", (D, units)))
            if i < len(self.forward_units) - 1:
                bn_build(self._forward_bns[i], units)
            fan_in = units
        super().build(input_shape)

    # ------------------------------------------------------------------ helpers
    def _split_inputs(self, inputs):
        x, domain, emb = input_list(self, inputs, BACKBONE_INPUTS)
        x = tf.cast(tf.convert_to_tensor(x), self.compute_dtype)
        emb = tf.cast(tf.convert_to_tensor(emb), self.compute_dtype)
        return x, domain_indices(domain, self.num_domains), emb

    def _hidden(self, z, bn, index, training):
        if bn is not None:
            z = bn([z, index], training=training)
        return self.activation(z)

    def _adapt(self, key, x, index):
        return self._dials[key]([x, index])

    # ------------------------------------------------------------------ gate / networks
    def gate_weights(self, domain_embedding):
        """Eq. 8 (softmax version): the shared-network mixing weights `alpha`, `[B, K]` (rows sum to 1).
        With `fusion="star"` (no gate) ones `[B, 1]`."""
        if not self.built:
            raise ValueError("Call the layer on [x, domain, domain_embedding] before `gate_weights`. "
                             "Received: an unbuilt layer")
        emb = tf.cast(tf.convert_to_tensor(domain_embedding), self.compute_dtype)
        if self.fusion == "star":
            return tf.ones(tf.stack([tf.shape(emb)[0], 1]), emb.dtype)
        # (explicit casts: outside `call` the variables are not auto-cast under mixed precision)
        logits = tf.matmul(emb, tf.cast(self.gate_kernel, emb.dtype)) + tf.cast(self.gate_bias, emb.dtype)
        return tf.nn.softmax(logits, axis=-1)

    def _shared(self, x_shared, emb, index, training):
        """Eq. 9: E_shared = sum_k alpha_k MLP_shared^k(x); x_shared [B, F] or [B, K, F] (4-SE)."""
        K = self.num_shared
        h = x_shared
        for i, units in enumerate(self.shared_units):
            equation = "bi,kio->bko" if h.shape.rank == 2 else "bki,kio->bko"
            z = tf.einsum(equation, h, self.shared_kernels[i]) + self.shared_biases[i]  # [B, K, units]
            if self._shared_bns[i] is not None:  # one DSBN over the K experts' units = one per expert
                z = tf.reshape(self._shared_bns[i]([tf.reshape(z, [-1, K * units]), index], training=training),
                               [-1, K, units])
            h = self.activation(z)
        alpha = self.gate_weights(emb)
        return tf.einsum("bk,bku->bu", alpha, h)

    def _specific(self, x_spec, index, training):
        """Eq. 10: E_spec = MLP_spec^(d)(x) for each row's domain d."""
        h = x_spec
        for i in range(len(self._spec_units)):
            z = per_domain_dense(h, self.specific_kernels[i], self.specific_biases[i], index)
            h = self._hidden(z, self._specific_bns[i], index, training)
        return h

    def _star(self, x, index, training):
        """Eq. 16-17: every layer (W_shared * W_spec^(d)) h + b_shared + b_spec^(d)."""
        h = x
        for i in range(len(self.shared_units)):
            kernel = self.star_shared_kernels[i][None] * self.star_specific_kernels[i]  # [D, in, out]
            z = per_domain_dense(h, kernel, self.star_specific_biases[i], index) + self.star_shared_biases[i]
            h = self._hidden(z, self._star_bns[i], index, training)
        return h

    def _fuse(self, e_spec, e_shared, emb, index):
        def logit(kernel):  # <w^(d), f_domain> per row, [B, 1]
            return tf.reduce_sum(tf.gather(kernel, index) * emb, axis=-1, keepdims=True)

        if self.fusion == "concat":  # eq. 11-13
            spec = tf.sigmoid(logit(self.fusion_spec_kernel)) * e_spec
            shared = tf.sigmoid(logit(self.fusion_shared_kernel)) * e_shared
            return tf.concat([spec, spec * shared, shared], axis=-1)
        a = tf.sigmoid(logit(self.fusion_gate_kernel) + self.fusion_gate_bias)  # eq. 14-15
        return a * e_spec + (1.0 - a) * e_shared

    def call(self, inputs, training=None):
        x, index, emb = self._split_inputs(inputs)
        if self._input_bn is not None:
            x = self._input_bn([x, index], training=training)
        if self.fusion == "star":
            if self.attention is not None:
                x = self._adapt("dial" if self.attention_placement == "per_network" else "dial_global", x, index)
            fused = self._star(x, index, training)
        else:
            if self.attention is None:
                x_shared = x_spec = x
            elif self.attention_placement == "per_expert":  # 4-SE: a block in front of every network
                x_shared = tf.stack([self._adapt(f"dial_shared_{k}", x, index) for k in range(self.num_shared)],
                                    axis=1)  # [B, K, F]
                x_spec = self._adapt("dial_specific", x, index)
            else:  # 3-SE / 1-SE: one adaptation of the features for all networks
                x_shared = x_spec = self._adapt("dial" if self.attention_placement == "per_network"
                                                else "dial_global", x, index)
            e_shared = self._shared(x_shared, emb, index, training)
            e_spec = self._specific(x_spec, index, training)
            fused = self._fuse(e_spec, e_shared, emb, index)
        h = fused if self._dropout is None else self._dropout(fused, training=training)
        # eq. 18: domain-specific forward network, last layer linear
        last = len(self.forward_units) - 1
        for i in range(len(self.forward_units)):
            if self.forward_sharing == "star":
                kernel = self.forward_shared_kernels[i][None] * self.forward_kernels[i]  # [D, in, out]
                h = per_domain_dense(h, kernel, self.forward_biases[i], index) + self.forward_shared_biases[i]
            else:
                h = per_domain_dense(h, self.forward_kernels[i], self.forward_biases[i], index)
            if i < last:
                h = self._hidden(h, self._forward_bns[i], index, training)
        return h

    def domain_attention_weights(self, inputs):
        """The `[B, F]` weights of every adaptation instance for `inputs = [x, domain, domain_embedding]`
        (or `[x, domain]`), as a dict keyed `"dial"` (3-SE), `"dial_global"` (1-SE) or
        `"dial_shared_<k>"` / `"dial_specific"` (4-SE); empty when `attention=None`. For ADI Fig. 5."""
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError("`domain_attention_weights` expects [x, domain, domain_embedding] or [x, domain]. "
                             f"Received: inputs={inputs!r}")
        if not self.built:
            raise ValueError("Call the layer on [x, domain, domain_embedding] before `domain_attention_weights`. "
                             "Received: an unbuilt layer")
        x = tf.cast(tf.convert_to_tensor(inputs[0]), self.compute_dtype)
        index = domain_indices(inputs[1], self.num_domains)
        if self._input_bn is not None:  # the adaptation layers read the normalised input
            x = self._input_bn([x, index], training=False)
        # through `__call__` (return_attention=True), which auto-casts the variables under mixed precision
        return {key: dial([x, index], return_attention=True)[1] for key, dial in self._dials.items()}

    def compute_output_shape(self, input_shape):
        x_shape = input_shapes(self, input_shape, BACKBONE_INPUTS)[0]
        return tf.TensorShape([x_shape[0], self.forward_units[-1]])

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_domains": self.num_domains,
            "num_shared": self.num_shared,
            "shared_units": list(self.shared_units),
            "specific_units": None if self.specific_units is None else list(self.specific_units),
            "forward_units": list(self.forward_units),
            "forward_sharing": self.forward_sharing,
            "fusion": self.fusion,
            "attention": self.attention,
            "attention_placement": self.attention_placement,
            "num_fields": self.num_fields,
            "attention_reduction": self.attention_reduction,
            "dsbn": self.dsbn,
            "input_norm": self.input_norm,
            "dropout": self.dropout,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "activation": keras.activations.serialize(self.activation),
            **kernel_config(self),
        })
        return config
