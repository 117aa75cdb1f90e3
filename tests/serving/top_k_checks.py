"""Float32 top-K results checked against float64 scores, with tolerances from float32 arithmetic.

Two float32 computations of the same scores (numpy and TensorFlow, another batch size, another
machine's BLAS kernels) add the products in other orders and differ in the last bits; items whose
scores are that close (near-ties) may then come in either order. These checks accept exactly that
and nothing more.
"""
import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)


def reference_scores(queries, embeddings, distance="dot_product"):
    """`[q, n]` scores in float64: products of float32 values are exact there, the sums nearly so."""
    q, e = np.asarray(queries, np.float64), np.asarray(embeddings, np.float64)
    dot = q @ e.T
    if distance == "dot_product":
        return dot
    return (q * q).sum(1)[:, None] - 2.0 * dot + (e * e).sum(1)[None, :]


def score_tolerance(queries, embeddings, distance="dot_product", input_error=0.0):
    """`[q, n]` bounds on the error of float32 scores.

    A float32 sum of d products errs by about eps * sqrt(d) times the sum of the products' magnitudes
    (the rounding errors add like a random walk, in whatever order a kernel sums them); 4x that
    leaves room. Squared L2 (`|q|^2 - 2 q.e + |e|^2`) sums three such terms. `input_error` bounds
    the error of each query element (e.g. a tower computed by another graph), which moves a score
    by at most `input_error * |e|_1`.
    """
    q, e = np.abs(np.asarray(queries, np.float64)), np.abs(np.asarray(embeddings, np.float64))
    scale = q @ e.T
    if distance == "squared_l2":
        scale = 2.0 * scale + (q * q).sum(1)[:, None] + (e * e).sum(1)[None, :]
    return 4.0 * F32_EPS * np.sqrt(q.shape[1]) * scale + input_error * e.sum(1)[None, :]


def assert_top_k(scores, positions, reference, tolerance, distance="dot_product"):
    """Asserts that float32 `scores` / `positions` `[q, k]` are the top k of `reference` `[q, n]`
    (float64), best first, up to `tolerance` `[q, n]`.

    Each score is its position's reference score within the tolerance; positions are distinct; and
    the i-th found is as good as the i-th best within twice the row's largest tolerance (an order
    statistic moves by at most the largest error), so only near-ties may trade places.
    """
    scores, positions = np.asarray(scores, np.float64), np.asarray(positions)
    k = positions.shape[1]
    assert all(len(set(row)) == k for row in positions.tolist()), "a position found twice"
    order = reference if distance == "squared_l2" else -reference
    best = np.take_along_axis(reference, np.argsort(order, axis=1, kind="stable")[:, :k], axis=1)
    found = np.take_along_axis(reference, positions, axis=1)
    off = np.abs(scores - found) - np.take_along_axis(tolerance, positions, axis=1)
    assert np.all(off <= 0), f"scores off their reference by up to {off.max():.3g} beyond the tolerance"
    swapped = np.abs(found - best) - 2.0 * tolerance.max(axis=1, keepdims=True)
    assert np.all(swapped <= 0), f"a found item worse than the best by {swapped.max():.3g} beyond the tolerance"
