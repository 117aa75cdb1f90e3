"""Two-tower retrieval: builds from the job's spec, learns, and evaluates Recall@K per domain."""
import numpy as np
import tf_keras as keras

from mdr_keras import data
from mdr_keras import feature_spec as fs
from mdr_keras.models.retrieval import RetrievalConfig, build_retrieval_model, evaluate_recall


def train(data_dir, model, epochs, seed=0):
    keras.utils.set_random_seed(seed)
    m = build_retrieval_model(fs.FeatureSpec.load(data_dir), model, RetrievalConfig())
    m.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = m.fit(data.make_dataset(data_dir, "train", 256, shuffle=True, seed=seed), epochs=epochs, verbose=0)
    return m, history.history["loss"]


def test_dnn_learns_beyond_chance(synthetic_data):
    out, meta = synthetic_data
    model, losses = train(out, "dnn", epochs=3)
    assert losses[-1] < losses[0]
    result = evaluate_recall(model, out, ks=(10, 50))
    assert set(result["per_domain"]) == set(meta["domains"])
    for d, r in result["per_domain"].items():
        # Chance: K / corpus size of the domain (a random ranking). The model must beat it clearly.
        # With q queries, a random ranking's recall has standard deviation <= sqrt(c(1-c)/q) <= 0.07
        # here (q >= 50); we ask for chance + 0.2, about three of them.
        chance = 10 / meta["items_per_domain"][d]
        assert r["recall@10"] > chance + 0.2, (d, r, chance)
    assert 0 < result["overall"]["queries"] == sum(r["queries"] for r in result["per_domain"].values())
    emb = model({k: v[:4] for k, v in next(iter(data.make_dataset(out, "eval", 4))).items()})
    np.testing.assert_allclose(np.linalg.norm(emb["user"], axis=1), 1.0, rtol=1e-5)
