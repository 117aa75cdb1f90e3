"""Two-tower retrieval: encoder -> shared embeddings -> user / item towers -> sampled-softmax task.

The model only wires the parts: the encoder maps raw values to indices (from the feature spec),
`SharedEmbedding` holds the tables both towers use, the towers return embeddings, and
`SampledSoftmaxRetrieval` computes the loss over the positive rows of a batch.

In-batch negatives under `MirroredStrategy`: each replica uses the positives of its own slice of
the global batch as negatives (no cross-replica gather); the global batch is scaled by the number of
replicas so every replica keeps the per-replica batch, and so the number of negatives, of a single
device. The loss is divided by the number of replicas so summed gradients equal the mean.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from mdr_contract import feature_spec as fs
from mdr_keras.layers.feature_encoder import FeatureEncoder
from mdr_keras.layers.plumbing import check_real
from mdr_keras.layers.towers import Tower
from mdr_keras.models.backbones import BACKBONES, make_backbone
from mdr_keras.models.parts import embedding_for, parts_config, with_parts
from mdr_keras.tasks.retrieval import SampledSoftmaxRetrieval

RETRIEVAL_MODELS = ("adi", "dnn", "dnn-domain", "dnn-single", "shared-bottom", "cross-stitch", "mmoe", "ple", "star")


@dataclasses.dataclass
class RetrievalConfig:
    """Sizes and training knobs of a two-tower model.

    The baselines' widths are chosen so that their towers have about the parameters of an ADI
    tower with the defaults (ADI sec. 5.1.4 compares models of a comparable budget); `mdr train`
    prints every model's parameter count.

    Args:
        embedding_dim: feature embedding size.
        tower_units: output network of the baselines' towers (Shared-Bottom, MMoE, PLE); its last
            width is every model's retrieval embedding size (one unit more with `popularity_prior`).
        temperature: softmax temperature over cosine similarities (dot products of the towers' unit vectors).
        l2: L2 regularization of the embedding tables.
        dropout: dropout in the baselines' hidden layers (ADI's is `fused_dropout`).
        num_shared, shared_units, specific_units, fusion, bn_momentum, attention,
            attention_placement: the ADI backbone (`ADIBackbone`).
        dsbn: ADI's domain-specific batch normalization (sec. 4.2.2). Off by default (the paper's form:
            `dsbn=True`): per-domain batch statistics and scale are noisiest in the smallest domains. On the
            planted world of users confined to one domain (6 seeds, eval Recall@50 overall) ADI scores
            0.7310 +- 0.0044 without DSBN and 0.7250 +- 0.0040 with it (smallest domain 0.8159 against
            0.8036), against dnn-domain's 0.7272 +- 0.0085; on MovieLens-1M (test Recall@50 / @100
            overall, 3 seeds) 0.3225 / 0.4693 without, 0.3219 / 0.4681 with, at 1.2x the examples/s.
        forward_units, forward_sharing, input_norm: ADI's forward network (eq. 18; its last width is
            replaced by `tower_units[-1]`), how its domains share it, and the per-domain normalisation of
            the tower input (`ADIBackbone`). The defaults are not the paper's: eq. 18 as written is a
            two-layer forward network per domain, `forward_units=(64, 32), forward_sharing="specific",
            input_norm=False`, and each of those choices loses recall on real data. On MovieLens-1M with
            ids only (domains = age groups, users in one domain, items shared; 2 epochs, seed 0, full-corpus
            Recall@50 overall) that variant scores 0.2556 against the domain-aware DNN's 0.2747 and STAR's
            0.2853, losing most in the smallest domain; STAR-style sharing of the forward network
            (`forward_sharing="star"`) brings 0.2685, the input normalisation with it 0.2730, and a single
            forward layer (`forward_units=(32,)`) 0.2853, tied with STAR in every domain (0.2881 / 0.2796 /
            0.2914 against 0.2878 / 0.2793 / 0.2928). A per-domain network of two layers learns from its own
            domain's rows only, which starves the small domains; SE attention over fields instead of units
            (`attention_fields`) and wider shared / specific networks moved it by -0.004 and +0.014. See
            docs/results.md ("Why ADI lost to a plain DNN") for the tables and commands.
        shared_units, specific_units: 128 wide by default (64 before). With the forward network fixed, width
            is what ADI still lacked against the domain-aware DNN (whose first layer is 256 wide): by
            `mdr train`'s recipe on the planted world of users confined to one domain (3 seeds, eval
            Recall@50 overall) 64 wide scores 0.7160 +- 0.0077 and 128 wide 0.7259 +- 0.0063 against
            dnn-domain's 0.7240 +- 0.0073 (per domain: 3 sd behind in the largest at 64, tied at 128); on
            MovieLens-1M (test Recall@50 overall, 3 seeds) 0.3154 +- 0.0011 -> 0.3219 +- 0.0014, ahead of
            STAR (0.3135) and dnn-domain (0.3011) in every domain at @50 and @100.
        fused_dropout: ADI's dropout on the fused representation, before the forward network (not in the
            paper; 0 is its form). 0.3 by default: on ids only, ADI's user tower fits each user's training clicks
            sooner than the DNN's (validation loss lowest one or two epochs earlier, and higher), and the
            sampled protocol that the held-out case is scored by shows it. On the planted world of users
            confined to one domain (3 seeds, eval, sampled Recall@10 over 100 uniform negatives, overall) ADI
            scores 0.6176 +- 0.0068 without it, last of the models, and 0.6401 +- 0.0051 with it, ahead of
            dnn-domain (0.6314), MMoE (0.6305), DNN-Single (0.6288) and Shared-Bottom (0.6273); full-corpus
            Recall@50 0.7311 -> 0.7425. On MovieLens-1M by `mdr train`'s recipe with 5 epochs at most (3
            seeds) it is within a seed sd of no dropout (0.3567 against 0.3539 test Recall@50), ahead of
            every baseline in every domain (STAR 0.3459, dnn-domain 0.3385); in 2 epochs at a constant 2e-3
            it slows the fit (0.3147 against 0.3225). See docs/results.md ("The held-out case's own protocol").
        attention_fields: ADI's domain attention scores whole feature fields (the paper's N features)
            instead of every embedding unit (default False: measured -0.004 Recall@50, see above).
        dnn_units: the DNN / DNN-Single MLP.
        bottom_units: Shared-Bottom's shared bottom (its towers are `tower_units`).
        stitch_units: Cross-Stitch's per-domain columns.
        num_experts, expert_units: MMoE's experts; PLE uses one shared and one specific expert
            per domain of `expert_units` (ADI: D + 1 networks of the same size).
        star_units, star_aux_units: STAR's star-topology network and auxiliary network.
        star_partitioned_norm: STAR's partitioned normalization of the input embeddings (off: ablation).
        self_training: ADI's self-training (sec. 4.3, Algorithm 1): every positive row of domain
            i is also scored as if it were in another domain j; the top `p` of them by score are
            added as positives of domain j, with `p` starting at `self_training_p` and growing by
            `self_training_delta` per epoch up to `self_training_max`.
        item_backbone: the item tower's backbone when it is not the model's own (one of `BACKBONES`; `"dnn"`
            with the domain among its inputs is dnn-domain's item tower). Default None: the model's. An
            ablation: on the planted world of users confined to one domain (3 seeds, Recall@50 / @100
            overall; every ADI part with DSBN, the default then) ADI with dnn-domain's item tower scores
            0.7297 / 0.8803 and dnn-domain with ADI's item tower 0.7282 / 0.8840, against ADI's 0.7250 /
            0.8796 and dnn-domain's 0.7272 / 0.8793 (6 seeds):
            neither tower separates them (docs/results.md, "The planted id-only world again").
        popularity_prior: a share `a` in [0, 1] of each logit carried by the item's popularity in the domain
            rather than learned: the towers' embeddings get one more unit (the user's 1, the item's
            `a * temperature * log(item_domain_clicks + 1)`, the job's click statistic of the item in the
            domain), so every dot product, in training, in evaluation and in the exported towers and index,
            gains `a * temperature * log(clicks + 1)`, the logit (dot product / temperature) `a * log(clicks +
            1)`, and the logQ correction (which subtracts `log(clicks + 1)`) keeps `1 - a` of its share; at
            1 the towers train uncorrected and learn what a user likes beyond the domain's bestsellers (Yi et
            al. 2019's two readings of in-batch softmax, joined). Default 0 (not in the paper; not for the
            domain-blind `dnn`, nor with self-training; the index must rank by dot product). On the planted
            world of users confined to one domain (3 seeds, eval, overall Recall@50 / @100) ADI scores
            0.7430 / 0.8911 with it against 0.7478 / 0.8940 without, dnn-domain 0.7330 / 0.8864 against
            0.7310 / 0.8788; it moves both toward the popularity ranking's strength (sampled Recall@50: ADI
            0.9686 against 0.9627, popularity 0.9718) and costs ADI at the head of the list (sampled
            Recall@10: 0.6310 against 0.6406). See docs/results.md ("A popularity prior").
    """

    embedding_dim: int = 16
    tower_units: Sequence[int] = (64, 32)
    temperature: float = 0.05
    l2: float = 0.0
    dropout: float = 0.0
    fused_dropout: float = 0.3
    num_shared: int = 2
    shared_units: Sequence[int] = (128,)
    specific_units: Sequence[int] = (128,)
    fusion: str = "concat"
    forward_units: Sequence[int] = (32,)
    forward_sharing: str = "star"
    dsbn: bool = False
    input_norm: bool = True
    bn_momentum: float = 0.9
    attention: Optional[str] = "se"
    attention_placement: str = "per_network"
    attention_fields: bool = False
    dnn_units: Sequence[int] = (256, 64, 32)
    bottom_units: Sequence[int] = (256,)
    stitch_units: Sequence[int] = (160, 32)
    num_experts: int = 4
    expert_units: Sequence[int] = (96,)
    star_units: Sequence[int] = (128, 32)
    star_aux_units: Sequence[int] = (32,)
    star_partitioned_norm: bool = True
    self_training: bool = False
    self_training_p: float = 0.05
    self_training_delta: float = 0.05
    self_training_max: float = 0.3
    item_backbone: Optional[str] = None
    popularity_prior: float = 0.0

    def __post_init__(self):
        if self.item_backbone is not None and self.item_backbone not in BACKBONES:
            raise ValueError(f"`item_backbone` must be None or one of {BACKBONES}. "
                             f"Received: item_backbone={self.item_backbone!r}")
        for name in ("self_training_p", "self_training_delta", "self_training_max"):
            check_real(name, getattr(self, name), 0, 1)
        check_real("fused_dropout", self.fused_dropout, 0, 1, high_open=True)
        check_real("temperature", self.temperature, 0, low_open=True)
        check_real("popularity_prior", self.popularity_prior, 0, 1)
        if self.popularity_prior and self.self_training:
            raise ValueError("`popularity_prior` and `self_training` do not go together: a pseudo-positive scored in "
                             "another domain would carry its own domain's prior. Received: popularity_prior="
                             f"{self.popularity_prior!r}, self_training={self.self_training!r}")


def tower_features(spec: fs.FeatureSpec) -> Tuple[List[str], List[str], List[str]]:
    """(user scalar features, user sequence features, item features) the towers read."""
    user = [f.name for f in spec.by_role(fs.ROLE_USER, fs.ROLE_USER_DOMAIN_STAT)] + [fs.DOMAIN]
    seq = [n for n in (fs.HIST_ITEM_ID, fs.HIST_CATEGORY) if n in spec]
    item = [f.name for f in spec.by_role(fs.ROLE_ITEM, fs.ROLE_ITEM_DOMAIN_STAT)] + [fs.DOMAIN]
    return user, seq, item


class RetrievalModel(keras.Model):
    """Encoder, shared embedding, user and item towers and the retrieval task, wired together.

    Args:
        encoder: `FeatureEncoder` of the spec.
        embedding: `SharedEmbedding` over the features both towers read.
        user_tower, item_tower: `Tower`s.
        task: `SampledSoftmaxRetrieval`.
        domains: the spec's domain names (index order), needed by self-training.
        self_training: `(p, delta, p_max)` to train with ADI's self-training, or None.
        popularity_prior: `RetrievalConfig.popularity_prior` (the extra unit of both towers' embeddings).

    Call arguments:
        inputs: dict of raw feature tensors (as `mdr_keras.data.make_dataset` yields them).
        training: training switch for the towers.

    Returns:
        {'user': [B, o], 'item': [B, o]} embeddings of each row's user and item, in the row's domain (o is
        the towers' output width, plus 1 with a popularity prior).
    """

    def __init__(self, encoder, embedding, user_tower, item_tower, task, domains=(), self_training=None,
                 popularity_prior=0.0, **kwargs):
        super().__init__(**kwargs)
        self.popularity_prior = float(popularity_prior)
        self.encoder = encoder
        self.embedding = embedding
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.task = task
        self.domains = list(domains)
        self.self_training = tuple(self_training) if self_training else None
        # The fraction p of cross-domain pseudo-positives; a callback raises it each epoch.
        self.pseudo_fraction = tf.Variable(self.self_training[0] if self.self_training else 0.0,
                                           trainable=False, dtype=tf.float32, name="pseudo_fraction")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.pseudo_tracker = keras.metrics.Mean(name="pseudo_loss")

    _LAYERS = ("encoder", "embedding", "user_tower", "item_tower", "task")

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "domains": list(self.domains),
                "self_training": list(self.self_training) if self.self_training else None,
                "popularity_prior": self.popularity_prior,
                **parts_config(self, self._LAYERS)}

    @classmethod
    def from_config(cls, config):
        return cls(**with_parts(config, cls._LAYERS))

    def _embed(self, raw):
        idx = self.encoder(raw)
        emb = self.embedding(idx)
        emb["domain_index"] = idx[fs.DOMAIN]
        return emb

    def _with_prior(self, embedding, raw, side):
        """`embedding` with the popularity prior's unit appended: 1 for users, `prior * temperature *
        log(clicks + 1)` for items, so that a dot product adds `prior * log(clicks + 1)` to the logit."""
        if not self.popularity_prior:
            return embedding
        if side == "user":
            extra = tf.ones_like(embedding[:, :1])
        else:
            log_q = tf.reshape(tf.cast(_log_clicks(raw), embedding.dtype), [-1, 1])
            extra = (self.popularity_prior * self.task.temperature) * log_q
        return tf.concat([embedding, extra], axis=-1)

    def _towers(self, raw, training):
        emb = self._embed(raw)
        return (self.user_tower(emb, training=training), self.item_tower(emb, training=training),
                emb["domain_index"])

    def _side(self, raw, side, training):
        return (self.user_tower if side == "user" else self.item_tower)(self._embed(raw), training=training)

    def towers(self, raw, training=False):
        """(user embeddings, item embeddings, domain indices) of the rows of `raw`."""
        user, item, domain = self._towers(raw, training)
        return self._with_prior(user, raw, "user"), self._with_prior(item, raw, "item"), domain

    def side_embedding(self, raw, side, training=False):
        """The `side` ('user' or 'item') tower's embeddings; `raw` needs only that side's features."""
        return self._with_prior(self._side(raw, side, training), raw, side)

    def user_embedding(self, raw, training=False):
        return self.side_embedding(raw, "user", training)

    def item_embedding(self, raw, training=False):
        return self.side_embedding(raw, "item", training)

    def domain_attention_weights(self, raw):
        """ADI's domain interest adaptation weights (Fig. 5) of the rows of `raw`: `{'user': {key: [B, F]},
        'item': {...}}`, per tower the dict of `Tower.domain_attention_weights` (empty without adaptation)."""
        emb = self._embed(raw)
        return {"user": self.user_tower.domain_attention_weights(emb),
                "item": self.item_tower.domain_attention_weights(emb)}

    def call(self, inputs, training=None):
        user, item, _ = self.towers(inputs, training)
        return {"user": user, "item": item}

    def _task_loss(self, raw, training):
        user, item, domain = self.towers(raw, training)
        task_inputs = {"query": user, "candidate": item, "candidate_ids": raw[fs.ITEM_ID], "domain": domain}
        if fs.ITEM_DOMAIN_CLICKS in raw:
            # In-batch positives are drawn with their click frequency: log Q = log(clicks) + a per-domain
            # constant, which cancels because negatives come from the row's own domain only.
            task_inputs["candidate_log_q"] = _log_clicks(raw)
        return self.task(task_inputs), user, item

    def compute_task_loss(self, raw, training):
        positive = tf.equal(raw[fs.LABEL], 1)
        return self._task_loss({k: tf.boolean_mask(v, positive) for k, v in raw.items()}, training)[0]

    def _pseudo_positives(self, raw, training):
        """ADI Algorithm 1: the positives moved to another domain j, the top `p` of them by score in j."""
        num_domains = len(self.domains)
        domain = tf.cast(tf.reshape(self.encoder(raw)[fs.DOMAIN], [-1]), tf.int32)
        shift = tf.random.uniform(tf.shape(domain), 1, num_domains, dtype=tf.int32)
        moved = dict(raw)
        moved[fs.DOMAIN] = tf.reshape(tf.gather(tf.constant(self.domains), (domain + shift) % num_domains),
                                      tf.shape(raw[fs.DOMAIN]))
        user, item, _ = self.towers(moved, training=False)
        score = tf.stop_gradient(tf.reduce_sum(user * item, axis=-1))
        n = tf.shape(score)[0]
        k = tf.cast(tf.math.ceil(self.pseudo_fraction * tf.cast(n, tf.float32)), tf.int32)
        top = tf.math.top_k(score, k=tf.minimum(k, n)).indices
        return {key: tf.gather(v, top) for key, v in moved.items()}

    # Python-only control flow: skipping AutoGraph's conversion makes the first trace several times faster.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        positive = tf.equal(data[fs.LABEL], 1)
        raw = {k: tf.boolean_mask(v, positive) for k, v in data.items()}
        with tf.GradientTape() as tape:
            loss = self._task_loss(raw, training=True)[0]
            total = loss + tf.add_n(self.losses) if self.losses else loss
            if self.self_training:
                pseudo = self._task_loss(self._pseudo_positives(raw, training=True), training=True)[0]
                total += pseudo
                self.pseudo_tracker.update_state(pseudo, sample_weight=_has_rows(raw))
            scaled = total / tf.distribute.get_strategy().num_replicas_in_sync
        # `minimize` with the tape: a LossScaleOptimizer (mixed precision) scales and unscales here.
        self.optimizer.minimize(scaled, self.trainable_variables, tape=tape)
        self.loss_tracker.update_state(loss, sample_weight=_has_rows(raw))
        return {m.name: m.result() for m in self.metrics}

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        positive = tf.equal(data[fs.LABEL], 1)
        self.loss_tracker.update_state(self.compute_task_loss(data, training=False),
                                       sample_weight=_has_rows({fs.LABEL: tf.boolean_mask(data[fs.LABEL], positive)}))
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker] + ([self.pseudo_tracker] if self.self_training else [])


def _log_clicks(raw):
    """log(clicks + 1) of each row's item in its domain: the logQ correction's sampling frequency, and the
    popularity prior's unit (which must cancel the same share of it)."""
    return tf.math.log(raw[fs.ITEM_DOMAIN_CLICKS] + 1.0)


def _has_rows(batch):
    """1.0 for a batch with rows, 0.0 for one without (its loss is 0, not a mean to average in)."""
    return tf.cast(tf.shape(batch[fs.LABEL])[0] > 0, tf.float32)


class SelfTrainingSchedule(keras.callbacks.Callback):
    """Raises the self-training fraction p by `delta` per epoch, up to `p_max` (ADI Algorithm 1)."""

    def on_epoch_begin(self, epoch, logs=None):
        if getattr(self.model, "self_training", None):
            p, delta, p_max = self.model.self_training
            self.model.pseudo_fraction.assign(min(p + delta * epoch, p_max))


class SingleDomainRetrievalModel(RetrievalModel):
    """DNN-Single: one independent two-tower DNN per domain (its own embeddings and towers).

    Each row goes through its own domain's model only, and in-batch negatives come from the same
    domain, so training on mixed batches is training the D models apart (ADI sec. 5.1.2).

    Args:
        encoder: `FeatureEncoder` of the spec.
        embeddings, user_towers, item_towers: one per domain, in domain-index order.
        task, domains: as `RetrievalModel`.
        **kwargs: as `RetrievalModel` (`popularity_prior`, `self_training`) and `keras.Model`.
    """

    def __init__(self, encoder, embeddings, user_towers, item_towers, task, domains=(), **kwargs):
        super().__init__(encoder, embeddings[0], user_towers[0], item_towers[0], task, domains=domains, **kwargs)
        self.embeddings = list(embeddings)
        self.user_towers = list(user_towers)
        self.item_towers = list(item_towers)

    # The single parts through RetrievalModel's config; `embedding` and the towers there are the first
    # domain's, so they come from the lists instead.
    _LAYERS = ("encoder", "task")
    _PER_DOMAIN = ("embeddings", "user_towers", "item_towers")

    def get_config(self):
        return {**super().get_config(),
                **{k: [keras.saving.serialize_keras_object(layer) for layer in getattr(self, k)]
                   for k in self._PER_DOMAIN}}

    @classmethod
    def from_config(cls, config):
        config = {**config, **{k: [keras.saving.deserialize_keras_object(layer) for layer in config[k]]
                               for k in cls._PER_DOMAIN}}
        return super().from_config(config)

    def _routed(self, raw, sides, training):
        idx = self.encoder(raw)
        domain = tf.reshape(tf.cast(idx[fs.DOMAIN], tf.int32), [-1])
        outputs = {side: [] for side in sides}
        for d, embedding in enumerate(self.embeddings):
            emb = embedding(idx)
            emb["domain_index"] = idx[fs.DOMAIN]
            for side in sides:
                tower = (self.user_towers if side == "user" else self.item_towers)[d]
                outputs[side].append(tower(emb, training=training))
        # Every row keeps its own domain's model's output.
        return [tf.gather(tf.stack(outputs[side], axis=1), domain, axis=1, batch_dims=1) for side in sides], idx

    def _towers(self, raw, training):
        (user, item), idx = self._routed(raw, ("user", "item"), training)
        return user, item, idx[fs.DOMAIN]

    def _side(self, raw, side, training):
        return self._routed(raw, (side,), training)[0][0]


def build_retrieval_model(spec: fs.FeatureSpec, model: str = "adi", config: RetrievalConfig = RetrievalConfig()
                          ) -> RetrievalModel:
    """A two-tower model of `model` (one of `RETRIEVAL_MODELS`) for the records described by `spec`."""
    if model not in RETRIEVAL_MODELS:
        raise ValueError(f"Unknown retrieval model. Received: model={model!r}; expected one of {RETRIEVAL_MODELS}")
    user, seq, item = tower_features(spec)
    # DNN is YouTube DNN trained on the mixed data of all domains (ADI sec. 5.1.2): one model blind to
    # the domain, so it reads neither the domain indicator nor the per-domain statistics. Those are
    # domain information too: an item's statistics in domain d act as a key of (item, d), from which
    # a tower learns the domain (measured: on data where only the domain tells the tastes apart, a
    # DNN with them matches ADI, without them it loses half its recall). `dnn-domain` reads both;
    # `dnn-single` trains one model per domain, so its statistics are its own domain's.
    blind = model == "dnn"
    if model == "adi" and config.dropout and config.item_backbone in (None, "adi"):
        raise ValueError("`dropout` is the baselines' hidden-layer dropout; ADI's is `fused_dropout`. "
                         f"Received: dropout={config.dropout!r} for model='adi'")
    if blind and config.popularity_prior:
        raise ValueError("The domain-blind `dnn` model reads no per-domain clicks for a popularity prior. "
                         f"Received: popularity_prior={config.popularity_prior!r}")
    if blind and config.item_backbone not in (None, "dnn"):
        raise ValueError("The domain-blind `dnn` model takes no item backbone that reads the domain. "
                         f"Received: item_backbone={config.item_backbone!r}")
    if blind:
        unseen = {f.name for f in spec.by_role(fs.ROLE_USER_DOMAIN_STAT, fs.ROLE_ITEM_DOMAIN_STAT)} | {fs.DOMAIN}
        user, item = [n for n in user if n not in unseen], [n for n in item if n not in unseen]
    elif model == "dnn-single":
        user, item = [n for n in user if n != fs.DOMAIN], [n for n in item if n != fs.DOMAIN]
    # The domain is always encoded, since rows are routed by it (evaluation, self-training), and
    # embedded for the towers' backbones unless they are blind to it.
    embedded = set(user + seq + item) | (set() if blind else {fs.DOMAIN})
    names = sorted(embedded)
    encoder = FeatureEncoder.from_spec(spec, names=sorted(embedded | {fs.DOMAIN}), name="encoder")
    domain_feature = None if blind else fs.DOMAIN
    task = SampledSoftmaxRetrieval(temperature=config.temperature, name="task")
    self_training = ((config.self_training_p, config.self_training_delta, config.self_training_max)
                     if config.self_training else None)

    def backbone(name, fields, kind=model):  # every tower ends in `tower_units[-1]` dims; dnn*: an MLP
        return make_backbone("dnn" if kind.startswith("dnn") else kind, spec.num_domains, config,
                             output_units=config.tower_units[-1], name=name,
                             num_fields=fields if config.attention_fields else None)

    def towers(suffix=""):
        return (Tower(user, seq, backbone("user_backbone" + suffix, len(user) + len(seq)),
                      domain_feature=domain_feature, name="user_tower" + suffix),
                Tower(item, (), backbone("item_backbone" + suffix, len(item), config.item_backbone or model),
                      domain_feature=domain_feature,
                      name="item_tower" + suffix))

    if model == "dnn-single":
        parts = [(embedding_for(encoder, names, config.embedding_dim, config.l2, name=f"embedding_{d}"),
                  *towers(f"_{d}")) for d in range(spec.num_domains)]
        return SingleDomainRetrievalModel(encoder, *map(list, zip(*parts)), task, domains=spec.domains,
                                          popularity_prior=config.popularity_prior,
                                          name="dnn_single_retrieval")
    return RetrievalModel(encoder, embedding_for(encoder, names, config.embedding_dim, config.l2), *towers(), task,
                          domains=spec.domains, self_training=self_training, popularity_prior=config.popularity_prior,
                          name=f"{model.replace('-', '_')}_retrieval")
