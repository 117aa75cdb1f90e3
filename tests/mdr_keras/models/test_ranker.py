"""CTR ranking models: every model builds and scores, padding is ignored, the ranker learns, DBO weights switch on,
weights reload, config errors."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras import data
from mdr_contract import feature_spec as fs
from mdr_keras import training
from mdr_keras.models import ranker as rk
from mdr_keras.evaluation import evaluate_ranker
from mdr_keras.models.ranker import RANKER_MODELS, RankerConfig, build_ranker_model


def first_batch(data_dir, split="train", size=32):
    return next(iter(data.make_dataset(data_dir, split, size)))


def ranker_beside_default(data_dir, **config):
    """(spec, first batch, the default ranker, the ranker with `config`), both built on that batch."""
    spec, batch = fs.FeatureSpec.load(data_dir), first_batch(data_dir)
    default = build_ranker_model(spec, "ranker", RankerConfig())
    changed = build_ranker_model(spec, "ranker", RankerConfig(**config))
    default(batch), changed(batch)
    return spec, batch, default, changed


@pytest.mark.parametrize("model, config", [(m, {}) for m in RANKER_MODELS] + [
    ("shared-bottom", {"d3_head": True}),
    ("star", {"d3_head": True, "sequence_pooling": "din"}),
    ("din", {"d3_head": True, "dsfs_fusion": "mul"}),
    ("ranker", {"dsfs_weight_rank": None}),  # D3's full generated weight (the paper's form)
    ("ranker", {"chunk_size": 10, "dsbn": True, "mlp_units": [], "dropout": 0.1}),  # chunk > T = 8: one query
    ("ranker", {"backbone": "mmoe"}),  # ADS + D3 on a multi-domain backbone instead of the prediction MLP
    ("ranker", {"backbone": "mlp"}),  # D3's head on the prediction MLP's last layer
    ("ranker-no-dsfs", {"backbone": "star"}),
    ("ranker", {"sequence_mean": True}),  # the mean of the sequence beside target attention's summary
    ("ranker-no-pcrg-psrg", {"sequence_mean": True}),
])
def test_every_model_scores_a_batch(synthetic_data, model, config):
    data_dir, _ = synthetic_data
    batch = first_batch(data_dir)
    m = build_ranker_model(fs.FeatureSpec.load(data_dir), model, RankerConfig(**config))
    p = m(batch)["probability"]
    assert p.shape == (32,) and p.dtype == tf.float32
    assert np.all((p.numpy() > 0) & (p.numpy() < 1))
    # A model with DSFS (the D3 head) has DBO weights unless it is the no-DBO ablation.
    d3 = model in ("ranker", "ranker-no-pcrg", "ranker-no-pcrg-psrg", "ranker-no-dbo") or (
        not model.startswith("ranker") and config.get("d3_head", False))
    assert (m.dsfs is not None) == d3
    assert (m.balance is not None) == (d3 and model != "ranker-no-dbo")
    # A backbone replaces the prediction MLP: baselines by name, the ranker models by config.
    network = model if model in ("shared-bottom", "mmoe", "ple", "star") else config.get("backbone")
    if network == "mlp":  # the prediction MLP, ending in a ReLU, feeds the head's transformation
        assert m.backbone.units == [200, 80] and m.dsfs.transform_dim == 80
    assert (m.backbone is not None) == (network is not None)
    assert len(m.hidden) == (0 if network is not None else len(config.get("mlp_units", (200, 80))))
    if config.get("sequence_mean"):  # D3's fields: the sequence summary is twice as wide (attention, mean)
        plain = build_ranker_model(fs.FeatureSpec.load(data_dir), model, RankerConfig())
        plain(batch)
        assert m.sequence_mean and m.dsfs.num_fields == plain.dsfs.num_fields + 3  # + d_S / e = 3 fields


def test_head_dropout_drops_the_d3_heads_output_in_training_only(synthetic_data):
    data_dir, _ = synthetic_data
    spec, batch = fs.FeatureSpec.load(data_dir), first_batch(data_dir)
    m = build_ranker_model(spec, "ranker", RankerConfig(head_dropout=0.5))
    inference = m.forward(batch, training=False)[0].numpy()
    np.testing.assert_array_equal(m.forward(batch, training=False)[0].numpy(), inference)
    assert not np.allclose(m.forward(batch, training=True)[0].numpy(), inference)
    assert m.get_config()["head_dropout"] == 0.5
    # Without a D3 head there is nothing to drop.
    assert build_ranker_model(spec, "mha", RankerConfig(head_dropout=0.5)).head_dropout is None


def test_head_skip_feeds_the_mlp_the_heads_input_beside_its_output(synthetic_data):
    data_dir, _ = synthetic_data
    spec, batch, plain, m = ranker_beside_default(data_dir, head_skip=True)
    # The first MLP layer reads DSFS's 32 units, plus E_all (every field embedding, 16 each) with the skip.
    assert plain.hidden[0].kernel.shape[0] == 32
    assert m.hidden[0].kernel.shape[0] == 32 + 16 * m.dsfs.num_fields
    assert m.get_config()["head_skip"] is True
    # On a backbone, Dense(1) reads DSFS's output and the backbone's last layer (80 units of the MLP).
    m = build_ranker_model(spec, "ranker", RankerConfig(head_skip=True, backbone="mlp"))
    m(batch)
    assert m.logit_layer.kernel.shape[0] == 32 + 80
    # Without a D3 head there is no head to skip.
    assert build_ranker_model(spec, "mha", RankerConfig(head_skip=True)).head_skip is False


def test_without_implicit_domain_features_the_gen_nets_read_the_domain_only(synthetic_data):
    data_dir, _ = synthetic_data
    _, _, paper, m = ranker_beside_default(data_dir, implicit_domain_features=False)
    # E_D: the domain's 16 units and, in the paper's form, the domain statistics' 16 each (six: 7 x 16 = 112).
    stats = len(paper.features["domain"]) - 1
    assert stats == len(fs.USER_DOMAIN_STATS) + len(fs.ITEM_DOMAIN_STATS)
    assert paper.psrg.weight_hidden_kernel.shape[0] == 16 * (1 + stats) and m.psrg.weight_hidden_kernel.shape[0] == 16
    # PCRG's gen-net reads E_D beside the candidate (E_Q).
    assert m.pcrg.hidden_kernel.shape[0] == paper.pcrg.hidden_kernel.shape[0] - 16 * stats
    # The statistics stay among what the prediction network reads: the D3 head's fields are unchanged.
    assert m.dsfs.num_fields == paper.dsfs.num_fields
    # It trains and evaluates (traced, as the benchmarks run it).
    m.compile(optimizer=keras.optimizers.Adam(1e-3))
    m.fit(data.make_dataset(data_dir, "train", 256).take(2), epochs=1, verbose=0)
    assert 0 < evaluate_ranker(m, data_dir, "eval", batch_size=512)["overall"]["auc"] < 1


def test_head_l2_penalises_the_d3_heads_kernels(synthetic_data):
    """`head_l2` adds head_l2 x the sum of squares of DSFS's (and its fusion gate's) kernels, and only those."""
    data_dir, _ = synthetic_data
    _, _, plain, m = ranker_beside_default(data_dir, head_l2=1e-3)
    kernels = [w for w in m.dsfs.trainable_weights if "kernel" in w.name]
    assert len(kernels) >= 8  # query, key, field, residual, the generators, the gate's layers
    expected = 1e-3 * sum(float(tf.reduce_sum(tf.square(w))) for w in kernels)
    assert float(tf.add_n(m.dsfs.losses)) == pytest.approx(expected, rel=1e-5)
    assert not plain.dsfs.losses
    assert len(m.losses) == len(plain.losses) + len(kernels)  # the embedding penalties are unchanged


@pytest.mark.parametrize("model", ["ranker", "din", "dnn", "mmoe"])
def test_padded_positions_do_not_change_the_output(synthetic_data, model):
    data_dir, meta = synthetic_data
    spec = fs.FeatureSpec.load(data_dir)
    batch = {k: v.numpy() for k, v in first_batch(data_dir).items()}
    padded = batch[fs.HIST_ITEM_ID] == b""
    assert padded.any() and (~padded).any()
    m = build_ranker_model(spec, model)
    before = m(batch)["probability"].numpy()
    # A position is padding iff its item is "": whatever its other sequence fields hold is ignored.
    noisy = dict(batch)
    noisy[fs.HIST_CATEGORY] = np.where(padded, spec.vocabulary("category")[0].encode(), batch[fs.HIST_CATEGORY])
    noisy[fs.HIST_DOMAIN] = np.where(padded, meta["domains"][-1].encode(), batch[fs.HIST_DOMAIN])
    np.testing.assert_allclose(m(noisy)["probability"].numpy(), before, rtol=1e-6, atol=1e-7)
    # ... while changing a real item does change the score (the check above can fail).
    real = dict(batch)
    real[fs.HIST_ITEM_ID] = np.where(padded, b"", spec.vocabulary(fs.ITEM_ID)[0].encode())
    assert not np.allclose(m(real)["probability"].numpy(), before)
    # A row without history scores a finite probability (all-padding attention pools zeros).
    empty = dict(batch)
    for name in (fs.HIST_ITEM_ID, fs.HIST_CATEGORY, fs.HIST_DOMAIN):
        empty[name] = np.full_like(batch[name], b"")
    assert np.all(np.isfinite(m(empty)["probability"].numpy()))


def test_ranker_learns_and_evaluates_per_domain(synthetic_data):
    data_dir, meta = synthetic_data
    keras.utils.set_random_seed(0)
    m = build_ranker_model(fs.FeatureSpec.load(data_dir), "ranker")
    m.total_steps.assign(2 * math.ceil(meta["rows_written_per_split"]["train"] / 256))  # DBO from epoch 2 on
    m.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = m.fit(data.make_dataset(data_dir, "train", 256, shuffle=True, seed=0), epochs=2, verbose=0).history
    assert history["loss"][1] < history["loss"][0], history
    assert set(history) == {"loss", "auc"}
    result = evaluate_ranker(m, data_dir, "eval", batch_size=200)  # several batches, a short last one
    assert set(result["per_domain"]) == set(meta["domains"])
    overall = result["overall"]
    assert overall["rows"] == meta["rows_written_per_split"]["eval"] == sum(
        r["rows"] for r in result["per_domain"].values())
    # Chance is 0.5; the eval split has about 550 rows (AUC standard error about 0.025).
    assert overall["auc"] > 0.6, result
    assert 0 < overall["logloss"] < 0.69 and 0 < overall["ctr"] < 1, result


# A world where the domain decides which *positions* of the sequence matter: a click is likely when
# the candidate's category is among the user's clicks 0-1 back in d0, 2-3 back in d1, 4-5 back in d2
# (any domain's clicks); users have no lasting interest and the domains share one popularity and bias.
# Attention by content alone (DIN, the mean of DNN) cannot tell one position from another.
PLANTED_SEQUENCE = dict(num_users=2000, num_items=100, num_categories=10, mean_events=30, sequence_strength=5.0,
                        user_interest=0.0, sequence_windows=((0, 2), (2, 4), (4, 6)), balanced_domains=True, seed=0)


def gap_and_sd(model, din, single_runs):
    """(gap per domain, its sd) of `model` ([2, D], two seeds) over the best of DIN ([2, D]) and
    `single_runs` (one seed each).

    Run-to-run noise: sigma^2 pooled over the six seed pairs (a pair's difference has variance 2 sigma^2);
    the gap (a two-seed mean minus a two-seed mean, or minus one run) has sd at most sigma * sqrt(1.5).
    """
    sigma = math.sqrt(np.mean(np.concatenate([model[0] - model[1], din[0] - din[1]]) ** 2) / 2)
    best_baseline = np.maximum.reduce([din.mean(axis=0), *single_runs])
    return model.mean(axis=0) - best_baseline, sigma * math.sqrt(1.5)


@pytest.mark.slow
def test_ranker_and_its_sequence_module_beat_din_mha_and_dnn_in_every_domain_when_domains_pick_the_positions(
        tmp_path):
    from tests import helpers

    data_dir, meta = helpers.planted_data(str(tmp_path), sequence_length=10, **PLANTED_SEQUENCE)

    def auc(model, seed, **model_config):
        # One epoch: enough for the sequence module to find the positions (and minutes, not ten, of CI).
        return helpers.train_and_score(data_dir, str(tmp_path / f"{model}_{seed}"), meta["domains"], "auc", "ranking",
                                       model, seed, epochs=1, learning_rate=2e-3, **model_config)

    # The whole ranker (ADS + the D3 head) and ADS's sequence module alone (PSRG + chunked PCRG on MHA, no
    # D3 head). Chunks of G = 2 positions match the planted windows (ADS sec. 2 "Chunked-Query Generation").
    ranker = np.stack([auc("ranker", s, chunk_size=2) for s in (0, 1)])
    ads = np.stack([auc("ranker-no-dsfs", s, chunk_size=2) for s in (0, 1)])
    din = np.stack([auc("din", s) for s in (0, 1)])
    mha, dnn = auc("mha", 0), auc("dnn", 0)
    for name, model in (("ranker", ranker), ("ADS", ads)):
        gap, gap_sd = gap_and_sd(model, din, [mha, dnn])
        print(f"\nLEARNING {name} AUC per domain {model.round(4).tolist()} din {din.round(4).tolist()} "
              f"mha {mha.round(4).tolist()} dnn {dnn.round(4).tolist()} gap {gap.round(4).tolist()} "
              f"gap sd {gap_sd:.4f}")
        # Measured, seeds 0/1, one epoch, the low-rank D3 head (weight_rank 4): ranker 0.797-0.806 /
        # 0.776-0.777 / 0.751-0.753, ADS 0.803-0.806 / 0.775-0.780 / 0.746-0.750, DIN 0.743-0.744 /
        # 0.731-0.735 / 0.710, MHA 0.742 / 0.727 / 0.690, DNN 0.746 / 0.732 / 0.695; gaps 0.055 / 0.044 /
        # 0.042 (ranker, 11-15 gap sd of 0.0037) and 0.058 / 0.045 / 0.038 (ADS, 12-18 gap sd of 0.0032).
        # With random init of both generated factors the ranker's seeds spread 0.02 (gap sd 0.019): the
        # second factor starts at zeros (DSFS docstring).
        # 3 sd: one-sided p < 0.0014 per domain.
        assert (gap > max(3 * gap_sd, 0.02)).all(), (name, model, din, mha, dnn, gap_sd)


def test_dbo_weights_apply_from_the_start_fraction(synthetic_data):
    data_dir, _ = synthetic_data
    spec = fs.FeatureSpec.load(data_dir)
    batch = first_batch(data_dir, size=64)
    m = build_ranker_model(spec, "ranker", RankerConfig(dbo_start_fraction=0.5))
    np.testing.assert_array_equal(m.sample_weights(batch, step=3), 1.0)  # total_steps 0 = unknown: never
    m.total_steps.assign(4)
    np.testing.assert_array_equal(m.sample_weights(batch, step=1), 1.0)  # step 1 < 0.5 * 4
    weights = m.sample_weights(batch, step=2).numpy()
    assert weights.shape == (64,) and np.std(weights) > 1e-3
    # w^cpl in [0.5 + 0.1, 0.5 + 1], w^spf in (0.5, 1.5): their product in (0.3, 2.25).
    assert np.all((weights >= 0.3) & (weights <= 2.25))
    # train_step reads the step from the optimizer.
    m.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert not bool(m.dbo_active())
    m.optimizer.iterations.assign(2)
    assert bool(m.dbo_active())
    no_dbo = build_ranker_model(spec, "ranker-no-dbo")
    no_dbo.total_steps.assign(4)
    np.testing.assert_array_equal(no_dbo.sample_weights(batch, step=3), 1.0)


def test_weights_save_and_load(synthetic_data, tmp_path):
    data_dir, _ = synthetic_data
    spec = fs.FeatureSpec.load(data_dir)
    batch = first_batch(data_dir)
    m = build_ranker_model(spec, "ranker")
    m.total_steps.assign(7)
    before = m(batch)["probability"].numpy()
    m.save_weights(str(tmp_path / "weights"))
    again = build_ranker_model(spec, "ranker")
    assert not np.allclose(again(batch)["probability"].numpy(), before)  # fresh weights differ
    again.load_weights(str(tmp_path / "weights"))
    np.testing.assert_allclose(again(batch)["probability"].numpy(), before, rtol=1e-6)
    assert int(again.total_steps.numpy()) == 7


@pytest.mark.parametrize("model,config", [("ranker", {}), ("ranker-no-dbo", {}), ("din", {}),
                                          ("star", {"d3_head": True}), ("mmoe", {"dsbn": True}),
                                          ("ranker", {"backbone": "ple"}), ("ranker", {"sequence_mean": True}),
                                          ("ranker", {"backbone": "mlp", "head_dropout": 0.1}),
                                          ("ranker", {"head_skip": True}),
                                          ("ranker", {"implicit_domain_features": False})])
def test_model_config_round_trip_same_predictions(synthetic_data, model, config):
    from tests.mdr_keras.layer_checks import assert_config_round_trip

    data_dir, _ = synthetic_data
    batch = first_batch(data_dir)
    m = build_ranker_model(fs.FeatureSpec.load(data_dir), model, RankerConfig(**config))
    before = m(batch)["probability"].numpy()
    clone = assert_config_round_trip(m)  # a complete config: no "non-serializable objects" warning on export
    clone(batch)
    clone.set_weights(m.get_weights())
    np.testing.assert_allclose(clone(batch)["probability"].numpy(), before, rtol=1e-6)


@pytest.mark.parametrize("config", [{}, {"head_skip": True}, {"head_skip": True, "backbone": "mlp"}])
def test_mixed_precision_gives_float32_probabilities(synthetic_data, config):
    data_dir, _ = synthetic_data
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        m = build_ranker_model(fs.FeatureSpec.load(data_dir), "ranker", RankerConfig(**config))
        p = m(first_batch(data_dir))["probability"]
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert p.dtype == tf.float32 and np.all(np.isfinite(p.numpy()))


@pytest.mark.parametrize("kwargs, message", [
    ({"chunk_size": 0}, "`chunk_size` must be an int >= 1"),
    ({"embedding_dim": 2.5}, "`embedding_dim` must be an int >= 1"),
    ({"mlp_units": [64, 0]}, "`mlp_units` must be a list of positive ints"),
    ({"tower_units": []}, "`tower_units` must be a non-empty list"),
    ({"dropout": 1.0}, "`dropout` must be in"),
    ({"eta": 0}, "`eta` must be > 0"),
    ({"dsfs_fusion": "prod"}, "`dsfs_fusion` must be one of"),
    ({"sequence_pooling": "max"}, "`sequence_pooling` must be one of"),
    ({"backbone": "dnn"}, "`backbone` must be one of"),
    ({"backbone": "mlp", "mlp_units": []}, "`mlp_units` must not be empty"),
    ({"backbone": "mlp", "dsbn": True}, "set `dsbn=False`"),
    ({"d3_head": 1}, "`d3_head` must be a bool"),
    ({"sequence_mean": "yes"}, "`sequence_mean` must be a bool"),
    ({"dsfs_weight_rank": 0}, "`dsfs_weight_rank` must be None or an int >= 1"),
    ({"dbo_start_fraction": 1.5}, r"`dbo_start_fraction` must be a number in \[0.0, 1.0\]"),
    ({"dbo_lambda_1": -1.0}, "`dbo_lambda_1` must be"),
    ({"head_l2": -1e-4}, "`head_l2` must be >= 0"),
    ({"head_dropout": 1.0}, "`head_dropout` must be in"),
    ({"head_skip": "yes"}, "`head_skip` must be"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RankerConfig(**kwargs)


def test_unknown_model_and_train_config(synthetic_data):
    with pytest.raises(ValueError, match="Unknown ranking model"):
        build_ranker_model(fs.FeatureSpec.load(synthetic_data[0]), "nope")
    # `mdr train --set mlp_units=[32]` reaches the RankerConfig (JSON lists become tuples).
    settings = training.TrainConfig(model="ranker", model_config={"mlp_units": [32]}).model_settings()
    assert isinstance(settings, rk.RankerConfig) and settings.mlp_units == (32,)
