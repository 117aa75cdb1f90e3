"""CTR ranking: encoder -> shared embeddings -> ADS sequence module -> D3 head -> click probability.

The default `ranker` wires the layers of ADS and D3 together (the model only wires them):

    idx   = FeatureEncoder(raw)                         raw strings / floats -> indices (feature spec)
    emb   = SharedEmbedding(idx)                        item table shared by item_id and hist_item_id, ...
    E_D   = [domain, user/item domain statistics]       ADS's domain features (explicit + implicit)
    E_S   = [hist_item_id, hist_category, hist_domain]  per position, [B, T, d_S]
    E_Q   = [item_id, category, domain]                 the candidate, in the same layout, [B, d_S]
    E_S'  = PSRG([E_S, E_D])                            ADS eq. 2-5
    Q     = PCRG([E_D, E_Q])                            ADS eq. 6-7, one query per chunk of positions
    s     = TargetAttention("mha")([Q, E_S', mask])     ADS eq. 8-12, padded positions weight 0
    h     = DSFS(fields)                                D3 eq. 6-14 over every field embedding and s
    logit = MLP(h) -> Dense(1)                          ADS eq. 13; p = sigmoid(logit)

and trains it with BCE weighted by D3's domain balance (DBO, eq. 15-19) from a fraction of training
on. `RANKER_MODELS` lists the ablations and baselines (`build_ranker_model`).

Distribution: the model keeps no Python-side state in `call`; `train_step` divides the loss by
the number of replicas so that the gradients summed over the replicas of `MirroredStrategy` are
those of the global-batch mean. DBO's batch statistics (D3 eq. 16) are those of each replica's
batch. Mixed precision: the logit is computed by a float32 layer; losses and metrics are float32.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from mdr_contract import feature_spec as fs
from mdr_keras.layers.domain_batch_norm import DomainBatchNormalization
from mdr_keras.layers.domain_fusion_gate import WEIGHT_FUSIONS
from mdr_keras.layers.dsfs import DomainSensitiveFeatureSelection
from mdr_keras.layers.feature_encoder import FeatureEncoder
from mdr_keras.layers.pcrg import MultiQueryGenerator
from mdr_keras.layers.plumbing import check_bool, check_choice, check_int, check_real, check_units
from mdr_keras.layers.psrg import PersonalizedSequenceRepresentation
from mdr_keras.layers.target_attention import TargetAttention
from mdr_keras.layers.towers import MLPBackbone
from mdr_keras.losses.domain_balance import DomainBalance, weighted_bce
from mdr_keras.models.backbones import make_backbone
from mdr_keras.models.parts import embedding_for, parts_config, with_parts

RANKER_MODELS = ("ranker", "dnn", "din", "mha", "shared-bottom", "mmoe", "ple", "star", "ranker-no-pcrg",
                 "ranker-no-pcrg-psrg", "ranker-no-dbo", "ranker-no-dsfs")
BACKBONE_MODELS = ("shared-bottom", "mmoe", "ple", "star")
RANKER_BACKBONES = ("mlp",) + BACKBONE_MODELS  # what a ranker* model's D3 head may sit on
POOLINGS = ("mean", "din")


@dataclasses.dataclass
class RankerConfig:
    """Sizes and training knobs of a ranking model.

    Args:
        embedding_dim: feature embedding size e (D3: 16).
        l2: L2 regularization of the embedding tables: `l2 x` the sum of squares of every table is
            added to the loss (as `keras.regularizers.l2` on the tables). Default 1e-5 (DeepCTR's
            default for its embeddings): by the default recipe on MovieLens-1M the ranker's id
            embeddings overfit without it (trained 8 epochs its validation AUC peaks at epoch 4, then
            falls as train AUC climbs to 0.87); with it the ranker's test AUC is 0.8159 +- 0.0004
            against 0.8139 +- 0.0009 at 0, and MMoE's 0.8170 +- 0.0003 against 0.8156 +- 0.0003 (3
            seeds each; benchmarks/results/ml1m-ranking-baselines.md). Dropout in the prediction MLP
            (0.2) left the ranker at 0.8151 (seed 0).
        head_l2: L2 regularization of the D3 head's kernels (DSFS, its weight generators and fusion
            gate): `head_l2 x` their sum of squares is added to the loss. Default 0: on MovieLens-1M
            (seed 0) the ranker scores 0.8152 at 1e-5 and underfits at 1e-4 (0.8107) against 0.8157
            at 0, although the head's validation loss rises from epoch 3 without it.
        dropout: dropout after every hidden layer of the prediction MLP and the baselines.
        head_dropout: dropout on the D3 head's output (DSFS's units; not on what `head_skip` adds
            beside them). Default 0 (D3's form). On MovieLens-1M by the default recipe (5 epochs),
            where the head's validation loss rises from epoch 3, 0.2 keeps it flat: test log loss
            0.5142 +- 0.0002 against 0.5208 +- 0.0008, AUC 0.8161 +- 0.0000 against 0.8159 +- 0.0004
            (3 seeds; benchmarks/results/ml1m-ranking-ablation.md). It is not the default because
            where domains matter it slows what the head learns: on the planted-position world of the
            ranker's learning test (1 epoch) 0.2 dropped the ranker's AUC from 0.797-0.806 /
            0.776-0.777 / 0.751-0.753 to 0.775-0.781 / 0.743-0.765 / 0.708-0.734 per domain (2
            seeds; the test failed: its lead over DIN fell below 3 sds), and on D3's one-epoch
            ML-1M protocol it gave
            AUC 0.7889 against 0.7891, log loss 0.5460 against 0.5435 (seed 0).
        head_skip: the network after the D3 head (the prediction MLP, or `Dense(1)` on a backbone)
            also reads the head's input (E_all, or the backbone's output) beside DSFS's output, so
            the head adds domain-sensitive features to what the network reads instead of being all
            it reads. Ignored without a D3 head. Default False (D3 eq. 14: the prediction reads
            DSFS's output only): on MovieLens-1M (seed 0) it gives 0.8155 test AUC, 0.8154 with
            `head_dropout=0.2`, against 0.8157 without (benchmarks/results/ml1m-ranking-ablation.md).
        mlp_units: hidden widths of the prediction MLP (ADS eq. 13; after DSFS in the D3 head). May
            be empty (the D3 head is then eq. 14 exactly: DSFS -> Dense(1)).
        attention_heads: heads H of the MHA target attention (must divide d_S = 3 e, or 2 e without
            a category sequence); the per-head dim is d_S / H.
        din_units: hidden widths of DIN's activation unit.
        chunk_size: items per chunk of PCRG's chunked-query generation (ADS Fig. 4-5 "Chunk K",
            K in {1, 2, 5, 10}; 1 = one query per position). Larger than T: one chunk (one query).
        psrg_hidden, pcrg_hidden: hidden width d_h of the PSRG / PCRG gen-nets.
        implicit_domain_features: E_D, what the PSRG and PCRG gen-nets read, holds the user and item
            domain statistics (ADS's implicit-domain-indicator features, sec. 2.2.1) beside the domain
            indicator. Default True (the paper's form); False: the indicator only (the statistics stay
            among the features the prediction network reads). An ablation of what the generated weights
            may fit: on MovieLens-1M (seed 0, test AUC) the indicator only gives 0.8154 against 0.8157
            (benchmarks/results/ml1m-ranking-ablation.md): the statistics are not what the ranker overfits.
        eta: PSRG's scale (ADS eq. 3).
        dsfs_units: width h of D3's transformation layer (the DSFS output).
        dsfs_field_units: width h1 of DSFS's per-field maps (D3 eq. 9).
        dsfs_fusion: D3's fusion of the generated and the global weight: "mul" (eq. 13 as printed)
            or "sum" (the convex mix its text describes). Default "sum": it trains better on the
            synthetic demo data (with "mul" the gate can only scale W by g_sp g_sh <= 1/4 and the
            product of two small random matrices starts the layer near zero).
        dsfs_gate_units: hidden widths of the fusion gate MLP (D3 eq. 11).
        dsfs_weight_rank: the rank r of DSFS's generated weight (`DomainSensitiveFeatureSelection(
            weight_rank=r)`), or None for D3's full generated `[F, h]` weight per row (the paper's
            form). Default 4: on MovieLens-1M (1 epoch, seeds 0-2, benchmarks/results/
            ml1m-ranking-d3-weight-rank.md) it gives the full form's AUC within a seed's spread with
            0.45M instead of 3.28M head parameters, and trains several times faster (the full head
            was most of the ranker's step: 0.32x DIN's examples/s, r = 4 0.92x;
            benchmarks/results/ml1m-ranker-training-speed.md).
        dbo_lower, dbo_upper: clip range [l, u] of the normalized complexity (D3 eq. 16).
        dbo_lambda_1, dbo_alpha_1, dbo_lambda_2, dbo_alpha_2: D3 eq. 17-18.
        dbo_start_fraction: fraction of the training steps after which DBO weights the loss.
        dsbn: domain-specific batch normalization (ADI eq. 20) after each hidden layer of the
            prediction MLP.
        bn_momentum: momentum of DSBN and of STAR's partitioned normalization.
        d3_head: give a baseline (`dnn`, `din`, `mha`, `shared-bottom`, `mmoe`, `ple`, `star`) the
            D3 head (DSFS + fusion gate + DBO), as D3 does with its backbones. The `ranker*` models
            decide their head by name and ignore it.
        backbone: where the `ranker*` models put D3's head. None (default): the head reads the
            fields and ADS's prediction MLP (`mlp_units`, eq. 13) its output. Otherwise a network
            between the features (with the pooled sequence) and the head, whose last layer the head
            transforms, as D3 plugs into its backbones (D3 Sec. 4): `"mlp"` (the prediction MLP's
            layers, ending in a ReLU, without `dsbn` and with `dropout` after all but the last) or a
            multi-domain backbone (`shared-bottom`, `mmoe`, `ple`, `star`, sized by the fields
            below). The baselines decide their network by name and ignore it.
        sequence_mean: the `ranker*` models also read the mean of the behaviour embeddings over the
            real positions, beside target attention's summary of the sequence (the summary the
            mean-pooling baselines read). Off by default: on MovieLens-1M MMoE with the mean beats
            MMoE with DIN's attention (test AUC 0.8157 vs 0.8138, seed 0), but adding the mean to the
            ranker gives 0.8146 against its 0.8148 (benchmarks/results/ml1m-ranking-baselines.md).
        sequence_pooling: how the multi-domain baselines (`shared-bottom`, `mmoe`, `ple`, `star`)
            pool the behaviour sequence: "mean" over the real positions (default, like the DNN
            group of ADS) or "din" target attention.
        bottom_units: Shared-Bottom's shared bottom.
        tower_units: the per-domain towers of Shared-Bottom, MMoE and PLE.
        num_experts, expert_units: MMoE's experts; PLE has one shared and one specific expert per
            domain of `expert_units`.
        star_units, star_aux_units: STAR's star-topology network and auxiliary network.
        star_partitioned_norm: STAR's partitioned normalization of its input (off: ablation).
    """

    embedding_dim: int = 16
    l2: float = 1e-5
    head_l2: float = 0.0
    dropout: float = 0.0
    head_dropout: float = 0.0
    head_skip: bool = False
    mlp_units: Sequence[int] = (200, 80)
    attention_heads: int = 2
    din_units: Sequence[int] = (80, 40)
    chunk_size: int = 5
    psrg_hidden: int = 64
    pcrg_hidden: int = 64
    implicit_domain_features: bool = True
    eta: float = 2.0
    dsfs_units: int = 32
    dsfs_field_units: int = 16
    dsfs_fusion: str = "sum"
    dsfs_gate_units: Sequence[int] = (64, 16)
    dsfs_weight_rank: Optional[int] = 4
    dbo_lower: float = 0.1
    dbo_upper: float = 1.0
    dbo_lambda_1: float = 0.5
    dbo_alpha_1: float = 1.0
    dbo_lambda_2: float = 0.5
    dbo_alpha_2: float = 1.0
    dbo_start_fraction: float = 0.5
    dsbn: bool = False
    bn_momentum: float = 0.99
    d3_head: bool = False
    backbone: Optional[str] = None
    sequence_pooling: str = "mean"
    sequence_mean: bool = False
    bottom_units: Sequence[int] = (200,)
    tower_units: Sequence[int] = (80,)
    num_experts: int = 4
    expert_units: Sequence[int] = (200,)
    star_units: Sequence[int] = (200, 80)
    star_aux_units: Sequence[int] = (32,)
    star_partitioned_norm: bool = True

    def __post_init__(self):
        for name in ("embedding_dim", "attention_heads", "chunk_size", "psrg_hidden", "pcrg_hidden", "dsfs_units",
                     "dsfs_field_units", "num_experts"):
            check_int(name, getattr(self, name))
        for name in ("din_units", "bottom_units", "tower_units", "expert_units", "star_units", "star_aux_units",
                     "mlp_units", "dsfs_gate_units"):  # tuples: JSON gives lists
            setattr(self, name, tuple(check_units(name, getattr(self, name),
                                                  allow_empty=name in ("mlp_units", "dsfs_gate_units"))))
        check_int("dsfs_weight_rank", self.dsfs_weight_rank, none_ok=True)
        check_real("l2", self.l2, 0)
        check_real("head_l2", self.head_l2, 0)
        check_real("dropout", self.dropout, 0, 1, high_open=True)
        check_real("head_dropout", self.head_dropout, 0, 1, high_open=True)
        check_real("eta", self.eta, 0, low_open=True)
        check_real("bn_momentum", self.bn_momentum, 0, 1)
        check_choice("dsfs_fusion", self.dsfs_fusion, WEIGHT_FUSIONS)
        check_choice("sequence_pooling", self.sequence_pooling, POOLINGS)
        if self.backbone is not None:
            check_choice("backbone", self.backbone, RANKER_BACKBONES)
            if self.backbone == "mlp" and not self.mlp_units:
                raise ValueError("`backbone='mlp'` is the prediction MLP: `mlp_units` must not be empty. "
                                 "Received: mlp_units=()")
            if self.backbone == "mlp" and self.dsbn:
                raise ValueError("`backbone='mlp'` has no domain-specific batch norm: set `dsbn=False`. "
                                 "Received: dsbn=True")
        for name in ("dsbn", "d3_head", "star_partitioned_norm", "sequence_mean", "head_skip",
                     "implicit_domain_features"):
            check_bool(name, getattr(self, name))
        self.domain_balance()  # DomainBalance checks the DBO fields (and names them)

    def domain_balance(self) -> DomainBalance:
        """D3's DBO with this config's hyper-parameters."""
        try:
            return DomainBalance(lower=self.dbo_lower, upper=self.dbo_upper, lambda_1=self.dbo_lambda_1,
                                 alpha_1=self.dbo_alpha_1, lambda_2=self.dbo_lambda_2, alpha_2=self.dbo_alpha_2,
                                 start_fraction=self.dbo_start_fraction)
        except ValueError as error:  # name the config fields, not DomainBalance's
            message = str(error)
            for name in ("start_fraction", "lambda_1", "alpha_1", "lambda_2", "alpha_2", "lower", "upper"):
                message = message.replace(f"`{name}", f"`dbo_{name}").replace(f" {name}=", f" dbo_{name}=")
            raise ValueError(message) from None


def ranker_features(spec: fs.FeatureSpec) -> Dict[str, list]:
    """The feature names each part of a ranker reads, from the spec's roles.

    Returns:
        {'user': user features, 'item': candidate features, 'domain': E_D (the domain indicator and
        the user / item domain statistics), 'sequence': the sequence fields concatenated per
        position, 'query': the candidate feature of each sequence field (same layout as a position)}.
    """
    sequence = [n for n in (fs.HIST_ITEM_ID, fs.HIST_CATEGORY, fs.HIST_DOMAIN) if n in spec]
    return {
        "user": [f.name for f in spec.by_role(fs.ROLE_USER)],
        "item": [f.name for f in spec.by_role(fs.ROLE_ITEM)],
        "domain": [fs.DOMAIN] + [f.name for f in spec.by_role(fs.ROLE_USER_DOMAIN_STAT, fs.ROLE_ITEM_DOMAIN_STAT)],
        "sequence": sequence,
        "query": [spec[n].vocab_from for n in sequence],  # item_id, the category feature, domain
    }


class RankerModel(keras.Model):
    """Encoder, shared embeddings, sequence module and CTR head, wired together; trains with BCE (+ DBO).

    Args:
        encoder: `FeatureEncoder` of the spec.
        embedding: `SharedEmbedding` over every feature the model reads.
        features: `ranker_features(spec)`, optionally with `'generator'`: the features of the gen-nets' E_D
            when they are not `'domain'`'s (`RankerConfig.implicit_domain_features`).
        num_domains: number of domains.
        psrg: `PersonalizedSequenceRepresentation` applied to the sequence, or None.
        pcrg: `MultiQueryGenerator` making the per-position queries, or None (one query: E_Q).
        attention: `TargetAttention` pooling the sequence, or None (mean over the real positions).
        backbone: a backbone (`MLPBackbone` or a multi-domain one) called as
            `backbone([x, domain, domain_embedding])`, or
            None (the prediction MLP reads the features).
        dsfs: `DomainSensitiveFeatureSelection` (the D3 head), or None.
        balance: `DomainBalance` weighting the loss (needs `dsfs`), or None (plain BCE).
        mlp_units, dropout, dsbn, bn_momentum: the prediction MLP (hidden layers, then `Dense(1)`).
        head_dropout: dropout rate on DSFS's output (with `dsfs`).
        head_skip: with `dsfs`, what follows the head reads DSFS's output concatenated with the
            head's input (the features, or the backbone's output).
        sequence_mean: with `attention`, also the mean of the sequence embeddings (before PSRG) over
            the real positions, concatenated to the attention's output.

    Call arguments:
        inputs: dict of raw feature tensors (as `mdr_keras.data.make_dataset` yields them: strings,
            floats, ints; sequences `[B, T]` padded with ""). Extra keys (label, ...) are ignored.
        training: training switch (dropout, DSBN, STAR's normalization).

    Returns:
        `{'probability': [B] float32}`, the click probability of each row ([B], not [B, 1], so a
        serving signature returns one number per request row).

    Attributes:
        total_steps: int64 variable, the number of training steps of the run (`mdr_keras.training`
            sets it). DBO applies from `dbo_start_fraction * total_steps` on; while it is 0 (unknown)
            DBO never applies.
    """

    def __init__(self, encoder, embedding, features, num_domains, psrg=None, pcrg=None, attention=None,
                 backbone=None, dsfs=None, balance=None, mlp_units=(), dropout=0.0, dsbn=False, bn_momentum=0.99,
                 sequence_mean=False, head_dropout=0.0, head_skip=False, **kwargs):
        super().__init__(**kwargs)
        if balance is not None and dsfs is None:
            raise ValueError("DBO weights come from DSFS's attention and gate: `balance` needs `dsfs`. "
                             "Received: dsfs=None")
        self.encoder = encoder
        self.embedding = embedding
        self.features = {k: list(v) for k, v in features.items()}
        # Resolved here, on the plain dict: `.get` of Keras' tracked dict wrapper inside traced code failed (AutoGraph).
        self._generator_features = list(features.get("generator", features["domain"]))
        self.num_domains = int(num_domains)
        self.psrg = psrg
        self.pcrg = pcrg
        self.attention = attention
        self.backbone = backbone
        self.dsfs = dsfs
        self.balance = balance
        self.hidden = [keras.layers.Dense(u, activation=None if dsbn else "relu", name=f"mlp_{i}")
                       for i, u in enumerate(mlp_units)]
        self.hidden_norms = [DomainBatchNormalization(num_domains, momentum=bn_momentum, name=f"mlp_dsbn_{i}")
                             for i in range(len(mlp_units))] if dsbn else []
        self.dropout = keras.layers.Dropout(dropout) if dropout else None
        self.head_dropout = keras.layers.Dropout(head_dropout) if head_dropout and dsfs is not None else None
        self.logit_layer = keras.layers.Dense(1, dtype="float32", name="logit")  # float32 under mixed precision
        self.total_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="total_steps")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.auc_tracker = keras.metrics.AUC(num_thresholds=2000, name="auc")
        self._mlp_config = {"mlp_units": [int(u) for u in mlp_units], "dropout": float(dropout), "dsbn": bool(dsbn),
                            "bn_momentum": float(bn_momentum), "sequence_mean": bool(sequence_mean),
                            "head_dropout": float(head_dropout) if dsfs is not None else 0.0,
                            "head_skip": bool(head_skip) and dsfs is not None}
        self.head_skip = bool(head_skip) and dsfs is not None
        self.sequence_mean = bool(sequence_mean) and attention is not None

    _LAYERS = ("encoder", "embedding", "psrg", "pcrg", "attention", "backbone", "dsfs")

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "features": {k: list(v) for k, v in self.features.items()},  # plain, not Keras' tracking wrappers
                "num_domains": self.num_domains,
                "balance": dataclasses.asdict(self.balance) if self.balance is not None else None,
                **self._mlp_config, **parts_config(self, self._LAYERS)}

    @classmethod
    def from_config(cls, config):
        config = with_parts(config, cls._LAYERS)
        if config["balance"] is not None:
            config["balance"] = DomainBalance(**config["balance"])
        return cls(**config)

    # ---------------------------------------------------------------- forward
    def _concat(self, emb, names):
        return tf.concat([emb[n] for n in names], axis=-1)

    # No data-dependent Python control flow below: AutoGraph would only spend tens of seconds converting
    # every layer's code on the first trace of train_step.
    @tf.autograph.experimental.do_not_convert
    def forward(self, inputs, training=None):
        """(logit [B] float32, DSFS outputs {'attention', 'specific_gate'} or None) of raw `inputs`."""
        return self.forward_encoded(self.encoder(inputs), training=training)

    @tf.autograph.experimental.do_not_convert
    def forward_encoded(self, idx, training=None):
        """`forward` of the encoder's indices `idx` (numeric ops only: no string lookups)."""
        f = self.features
        emb = self.embedding(idx)
        domain = tf.reshape(idx[fs.DOMAIN], [-1])
        domain_features = self._concat(emb, self._generator_features)  # E_D of the gen-nets
        sequence = self._concat(emb, f["sequence"])  # E_S, [B, T, d_S]
        # A position is real iff it holds an item: its other fields' values do not matter at padding.
        mask = tf.not_equal(idx[fs.HIST_ITEM_ID], 0)
        mean = None
        if self.attention is None or self.sequence_mean:
            real = tf.cast(mask, sequence.dtype)[..., None]
            mean = tf.math.divide_no_nan(tf.reduce_sum(sequence * real, axis=1), tf.reduce_sum(real, axis=1))
        if self.psrg is not None:
            sequence = self.psrg([sequence, domain_features])  # eq. 2-5
        if self.attention is None:
            pooled = mean
        else:
            query = self._concat(emb, f["query"])  # E_Q
            if self.pcrg is not None:
                query = self.pcrg([domain_features, query])  # eq. 6-7, [B, T, d_S]
            pooled = self.attention([query, sequence, mask])  # eq. 8-12
            if mean is not None:
                pooled = tf.concat([pooled, tf.cast(mean, pooled.dtype)], axis=-1)
        parts = [emb[n] for n in f["user"] + f["item"] + f["domain"]]
        x = tf.concat(parts + [tf.cast(pooled, parts[0].dtype)], axis=-1)  # eq. 13's E_all
        h, extras = x, None
        if self.backbone is not None:
            h = self.backbone([x, domain, emb[fs.DOMAIN]], training=training)
        if self.dsfs is not None:
            # D3's fields: every feature embedding, plus the sequence summary cut into fields of e dims.
            e = parts[0].shape[-1]
            fields = tf.stack(parts, axis=1)
            fields = tf.concat([fields, tf.reshape(tf.cast(pooled, fields.dtype), [-1, pooled.shape[-1] // e, e])],
                               axis=1)
            out = self.dsfs(fields if self.backbone is None else [fields, h], return_attention=True)
            head_input = h
            h, extras = out["output"], {"attention": out["attention"], "specific_gate": out["specific_gate"]}
            if self.head_dropout is not None:
                h = self.head_dropout(h, training=training)
            if self.head_skip:
                h = tf.concat([h, tf.cast(head_input, h.dtype)], axis=-1)
        for i, dense in enumerate(self.hidden):
            h = dense(h)
            if self.hidden_norms:
                h = tf.nn.relu(self.hidden_norms[i]([h, domain], training=training))
            if self.dropout is not None:
                h = self.dropout(h, training=training)
        logit = tf.cast(tf.reshape(self.logit_layer(h), [-1]), tf.float32)
        return logit, extras

    def call(self, inputs, training=None):
        logit, _ = self.forward(inputs, training=training)
        return {"probability": tf.sigmoid(logit)}

    # ---------------------------------------------------------------- loss
    def dbo_active(self, step=None):
        """Bool tensor: whether DBO weights the loss at `step` (default: the optimizer's)."""
        if self.balance is None:
            return tf.constant(False)
        step = self.optimizer.iterations if step is None else step
        return tf.logical_and(self.total_steps > 0, self.balance.active(step, self.total_steps))

    def loss_weights(self, extras, step=None):
        """Per-row loss weights `[B]` (float32, no gradient): DBO's w^cpl w^spf when active, else 1."""
        if self.balance is None or extras is None:
            return None
        weights = self.balance.weights(extras["attention"], extras["specific_gate"])
        return tf.where(self.dbo_active(step), weights, tf.ones_like(weights))

    def sample_weights(self, inputs, step=None, training=False):
        """The loss weights `[B]` of the rows of raw `inputs` at `step` (all 1 without DBO)."""
        logit, extras = self.forward(inputs, training=training)
        weights = self.loss_weights(extras, step)
        return tf.ones_like(logit) if weights is None else weights

    @staticmethod
    def _labels(data):
        return tf.cast(tf.reshape(data[fs.LABEL], [-1]), tf.float32)

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        labels = self._labels(data)
        with tf.GradientTape() as tape:
            logit, extras = self.forward(data, training=True)
            loss = weighted_bce(labels, logit, self.loss_weights(extras), from_logits=True)  # D3 eq. 19
            total = loss + tf.add_n(self.losses) if self.losses else loss
            scaled = total / tf.distribute.get_strategy().num_replicas_in_sync
        self.optimizer.minimize(scaled, self.trainable_variables, tape=tape)  # scales the loss if mixed fp16
        self._update_metrics(labels, logit)
        return {m.name: m.result() for m in self.metrics}

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        labels = self._labels(data)
        logit, _ = self.forward(data, training=False)
        self._update_metrics(labels, logit)
        return {m.name: m.result() for m in self.metrics}

    def _update_metrics(self, labels, logit):
        # "loss" is the plain BCE in training and evaluation alike (DBO's weights change the optimised
        # loss only), so it can be compared across epochs, models and the validation split.
        # Weighted by rows: a last partial batch (or a replica's empty share of it) counts for what it holds.
        self.loss_tracker.update_state(weighted_bce(labels, logit, from_logits=True),
                                       sample_weight=tf.cast(tf.size(labels), tf.float32))
        self.auc_tracker.update_state(labels, tf.sigmoid(logit))

    @property
    def metrics(self):
        return [self.loss_tracker, self.auc_tracker]


def build_ranker_model(spec: fs.FeatureSpec, model: str = "ranker", config: RankerConfig = RankerConfig()
                       ) -> RankerModel:
    """A ranking model `model` (one of `RANKER_MODELS`) for the records described by `spec`.

    - `ranker`: PSRG + PCRG + MHA target attention, D3 head (DSFS + fusion gate) and DBO.
    - `ranker-no-pcrg`: one query (the candidate) for every position; `ranker-no-pcrg-psrg`: the
      plain MHA sequence module too (ADS Table 3); `ranker-no-dbo`: plain BCE; `ranker-no-dsfs`: the
      prediction MLP without DSFS / fusion gate, hence without DBO (its weights come from them).
    - `dnn`: the mean of the sequence over its real positions + MLP; `din`: DIN's target attention
      (activation unit, no softmax) + MLP; `mha`: MHA target attention + MLP (the ADS backbones).
    - `shared-bottom`, `mmoe`, `ple`, `star`: the multi-domain backbones of `mdr_keras.layers` over
      the features and the sequence pooled by `config.sequence_pooling`, then `Dense(1)`.
    - `config.backbone`: a `ranker*` model's D3 head on that network's last layer (`"mlp"`: the
      prediction MLP; else a multi-domain backbone replacing it).
    - `config.d3_head`: a baseline gets the D3 head (DSFS over the fields, transforming its MLP input
      or its backbone's output, D3's plug-in) and DBO.
    """
    if model not in RANKER_MODELS:
        raise ValueError(f"Unknown ranking model. Received: model={model!r}; expected one of {RANKER_MODELS}")
    c = config
    f = ranker_features(spec)
    names = sorted(set(sum(f.values(), [])))
    # The encoder reads raw floats in float32 (Discretization has no float16 kernel under mixed precision).
    encoder = FeatureEncoder.from_spec(spec, names=names, name="encoder")
    embedding = embedding_for(encoder, names, c.embedding_dim, c.l2)
    T, D = spec.sequence_length, spec.num_domains
    ranker = model.startswith("ranker")

    psrg = pcrg = attention = backbone = None
    if model in ("ranker", "ranker-no-pcrg", "ranker-no-dbo", "ranker-no-dsfs"):
        psrg = PersonalizedSequenceRepresentation(hidden_units=c.psrg_hidden, eta=c.eta, name="psrg")
    if model in ("ranker", "ranker-no-dbo", "ranker-no-dsfs"):
        pcrg = MultiQueryGenerator(T, chunk_size=min(c.chunk_size, T), hidden_units=c.pcrg_hidden, name="pcrg")
    if ranker or model == "mha":
        attention = TargetAttention("mha", num_heads=c.attention_heads, name="target_attention")
    elif model == "din" or (model in BACKBONE_MODELS and c.sequence_pooling == "din"):
        attention = TargetAttention("din", hidden_units=list(c.din_units), name="target_attention")
    mlp_units = c.mlp_units
    network = model if model in BACKBONE_MODELS else c.backbone if ranker else None
    if network == "mlp":  # the prediction MLP as the backbone: D3's head transforms its last layer
        backbone = MLPBackbone(mlp_units, dropout=c.dropout, output_activation="relu", name="backbone")
        mlp_units = ()
    elif network is not None:  # ending in a ReLU layer, which `Dense(1)` or DSFS reads
        backbone = make_backbone(network, D, c, output_activation="relu", name="backbone")
        mlp_units = ()  # the backbone is the network; Dense(1) (after DSFS with the D3 head) on top
    d3 = model in ("ranker", "ranker-no-pcrg", "ranker-no-pcrg-psrg", "ranker-no-dbo") or (not ranker and c.d3_head)
    dsfs = DomainSensitiveFeatureSelection(c.dsfs_units, field_units=c.dsfs_field_units, fusion=c.dsfs_fusion,
                                           gate_units=list(c.dsfs_gate_units), weight_rank=c.dsfs_weight_rank,
                                           kernel_regularizer=keras.regularizers.l2(c.head_l2) if c.head_l2 else None,
                                           name="dsfs") if d3 else None
    balance = c.domain_balance() if d3 and model != "ranker-no-dbo" else None
    if not c.implicit_domain_features and (psrg is not None or pcrg is not None):
        f = {**f, "generator": [fs.DOMAIN]}  # E_D of the gen-nets: the explicit indicator only
    return RankerModel(encoder, embedding, f, D, psrg=psrg, pcrg=pcrg, attention=attention, backbone=backbone,
                       dsfs=dsfs, balance=balance, mlp_units=mlp_units, dropout=c.dropout, dsbn=c.dsbn,
                       head_dropout=c.head_dropout, head_skip=c.head_skip,
                       bn_momentum=c.bn_momentum, sequence_mean=c.sequence_mean and ranker,
                       name=model.replace("-", "_"))
