"""Per-domain ScaNN retrieval index, its exact counterpart, and the recall check made at build time.

Each domain gets its own ScaNN searcher over the item tower's embeddings of that domain's items
(partitioning tree + anisotropic asymmetric hashing + exact reordering), with its parameters scaled
to the domain's size: `leaves ~ sqrt(n)`, and per query 10% of them searched, or more when K is
large against a leaf: the leaves searched hold at least `50 * K` points on average (with K = 100
and 20k items, leaves of ~140 points, 10% of the leaves gave recall@100 = 0.78 on clustered unit
vectors, 25% gave 0.92; at 200k items 5% already gave 0.998). A domain smaller than
`IndexConfig.brute_force_below` (20k, ScaNN's own advice) gets ScaNN's brute-force scorer
instead: k-means partitioning needs enough points per leaf, and a small domain is scored exactly
in about the time a tree search takes.

One searcher, two uses. The searcher is built once, with the TensorFlow ScaNN ops
(`scann.scann_ops.builder`), and that very searcher is both measured and exported: the recall
reported at build time is the recall of the index that gets served (two builds, a pybind one to
measure and a TF one to export, would train two different trees). Its state is a
`scann_ops.ScannState` (`tf.Variable`s: config, partitioner, token map, codebook, hashed and
float datasets) and the searcher is recreated from them inside the graph by the
`Scann>TensorsToScann` op - a resource kernel, so the searcher is built on the first call of a
loaded function and reused afterwards. This is what the TFRS `factorized_top_k.ScaNN` layer does
internally; the layer itself is not used: it exposes neither the anisotropic threshold, nor the
training sample size, nor brute force for small corpora, and several of them in one SavedModel
break after `tf.saved_model.load` (tfrs 0.7.7, scann 1.3.2, TF 2.16.2: every layer answers with
the searcher of the first one called, as `ScannState.recreate_handle` builds the same graph for
all of them). `DomainIndex.searcher_handle` recreates the searcher under a node name unique to
the index, which keeps the domains' searchers apart.

Routing by domain inside the graph. A batch may mix domains, so the rows are split by their
domain (`tf.dynamic_partition`), each domain's searcher answers only its own rows, and the
answers are put back in row order (`tf.dynamic_stitch`). Every row costs one search in one index;
searching every domain for every row and gathering would cost `D` searches per row, and
`tf.switch_case` routes a whole batch, not rows. A domain with fewer than K items (or a searcher
returning fewer than K) is padded to K with score `-inf` and id `b""`, so outputs are always
`[B, K]`.

Exports. `MultiDomainIndex` needs a model server with the ScaNN ops (`import scann` registers them
in Python; do it before `tf.saved_model.load`, see `load_index`). `ExactDomainIndex` has the same
call signature and holds the per-domain embedding matrices as variables, scoring a row against its
own domain's matrix with `tf.linalg.matmul` + `tf.math.top_k`: stock ops only, so stock TF Serving
loads it. Scores are dot products for `distance="dot_product"` (higher is better) and squared L2
distances for `distance="squared_l2"` (lower is better, ascending), as ScaNN returns them.

Recall check. After building, `recall@K` of the searcher against exact search is measured on
`eval_queries` queries per domain (the given ones, else corpus vectors plus Gaussian noise of 0.1
of the corpus' per-dimension standard deviation - a proxy for user embeddings trained to land
near their items) and reported per domain; below `min_recall` it is logged as a warning that
starts with `LOW RECALL`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mdr_contract import artifacts
from mdr_keras.layers.plumbing import domain_indices, is_int

logger = logging.getLogger(__name__)

DISTANCES = ("dot_product", "squared_l2")
# Fewest leaves searched when the other rules give fewer: with a handful of leaves, one wrong
# partition loses a large part of the neighbours.
MIN_LEAVES_TO_SEARCH = 10
# Standard deviation of the noise added to sampled corpus vectors to make evaluation queries,
# relative to the corpus' per-dimension standard deviation.
QUERY_NOISE = 0.1
_EVAL_CHUNK = 64  # queries per exact-search block: bounds the [chunk, n] score matrix in memory


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Parameters of a domain's ScaNN index and of its build-time recall check.

    Args:
        num_neighbors: K, the number of items a query returns.
        leaves: partitions of the tree; None: `round(sqrt(n))` for a domain of `n` items.
        leaves_to_search: partitions searched per query; None: the largest of
            `ceil(search_fraction * leaves)`, enough leaves to hold `candidates_per_neighbor * K`
            points on average, and 10 (at most all leaves).
        search_fraction: fraction of the leaves searched when `leaves_to_search` is None.
        candidates_per_neighbor: points searched per neighbour asked for, when
            `leaves_to_search` is None (matters when K is large against `n / leaves`).
        dimensions_per_block: dimensions per asymmetric-hashing block (2 is ScaNN's advice; more
            compresses further and loses accuracy).
        anisotropic_quantization_threshold: ScaNN's anisotropic (score-aware) quantization
            threshold for dot-product search; ignored for `squared_l2`.
        reorder_multiplier: `K * reorder_multiplier` hashed candidates are re-scored exactly
            before the top K are kept; 0 disables reordering. 10 is ScaNN's example (100 for
            K = 10); with 4, the hashing error alone cost ~6% of recall@10 on 32-d clustered
            data, while re-scoring 10 K float vectors is cheap next to scanning the leaves.
        training_sample_size: points sampled to train the tree and the codebooks.
        distance: `"dot_product"` (maximum inner product) or `"squared_l2"`.
        min_recall: recall@K vs exact search below which the build logs `LOW RECALL`.
        eval_queries: queries per domain used to measure recall@K at build time.
        brute_force_below: a domain with fewer items is scored by brute force (exact), as
            k-means partitioning needs enough points per leaf (ScaNN advises brute force below
            about 20k points).
        target_recall: None, or the recall@K against exact search that each domain's tree is
            tuned for at build time (when `leaves_to_search` is None): the tree is searched with
            1, 2, 3, 4, 6, 9, 13, ... leaves (`tuning_grid`) on the evaluation queries, and the
            smallest count reaching `target_recall` is kept. Where every leaf still falls short
            (the hashing's error), the same again re-scoring 2, 4, then 8 times `reorder_multiplier
            * K` candidates. The fewer leaves searched, the faster the query: the tuned count
            replaces the fixed guess of `search_fraction` / `candidates_per_neighbor`.
    """

    num_neighbors: int = 100
    leaves: Optional[int] = None
    leaves_to_search: Optional[int] = None
    search_fraction: float = 0.1
    candidates_per_neighbor: int = 50
    dimensions_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder_multiplier: int = 10
    training_sample_size: int = 100_000
    distance: str = "dot_product"
    min_recall: float = 0.9
    eval_queries: int = 1000
    brute_force_below: int = 20_000
    target_recall: Optional[float] = None

    def __post_init__(self):
        def positive_int(name, value, allow_none=False, minimum=1):
            if value is None and allow_none:
                return
            if not is_int(value) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}"
                                 f"{' or None' if allow_none else ''}. Received: {name}={value!r}")

        positive_int("num_neighbors", self.num_neighbors)
        positive_int("leaves", self.leaves, allow_none=True)
        positive_int("leaves_to_search", self.leaves_to_search, allow_none=True)
        if self.leaves is not None and self.leaves_to_search is not None \
                and self.leaves_to_search > self.leaves:
            raise ValueError(f"`leaves_to_search` must be <= `leaves`. Received: "
                             f"leaves_to_search={self.leaves_to_search}, leaves={self.leaves}")
        if not _is_real(self.search_fraction) or not 0.0 < self.search_fraction <= 1.0:
            raise ValueError(f"`search_fraction` must be in (0, 1]. Received: "
                             f"search_fraction={self.search_fraction!r}")
        positive_int("candidates_per_neighbor", self.candidates_per_neighbor, minimum=0)
        positive_int("dimensions_per_block", self.dimensions_per_block)
        if not _is_real(self.anisotropic_quantization_threshold):
            raise ValueError(f"`anisotropic_quantization_threshold` must be a number. Received: "
                             f"anisotropic_quantization_threshold={self.anisotropic_quantization_threshold!r}")
        positive_int("reorder_multiplier", self.reorder_multiplier, minimum=0)
        positive_int("training_sample_size", self.training_sample_size)
        if self.distance not in DISTANCES:
            raise ValueError(f"`distance` must be one of {DISTANCES}. Received: distance={self.distance!r}")
        if not _is_real(self.min_recall) or not 0.0 <= self.min_recall <= 1.0:
            raise ValueError(f"`min_recall` must be in [0, 1]. Received: min_recall={self.min_recall!r}")
        positive_int("eval_queries", self.eval_queries)
        positive_int("brute_force_below", self.brute_force_below, minimum=0)
        if self.target_recall is not None and (not _is_real(self.target_recall)
                                               or not 0.0 < self.target_recall <= 1.0):
            raise ValueError(f"`target_recall` must be None or in (0, 1]. Received: "
                             f"target_recall={self.target_recall!r}")

    def leaves_for(self, num_items: int) -> int:
        """Leaves of a tree over `num_items` points: `leaves`, or `round(sqrt(num_items))`."""
        if self.leaves is not None:
            return self.leaves
        return max(1, int(round(math.sqrt(num_items))))

    def leaves_to_search_for(self, num_items: int, leaves: int) -> int:
        """Leaves searched per query in a tree of `leaves` leaves over `num_items` points."""
        if self.leaves_to_search is not None:
            return min(self.leaves_to_search, leaves)
        by_fraction = math.ceil(self.search_fraction * leaves)
        by_candidates = math.ceil(self.candidates_per_neighbor * self.num_neighbors * leaves / num_items)
        return min(leaves, max(by_fraction, by_candidates, MIN_LEAVES_TO_SEARCH))


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ------------------------------------------------------------------ in-graph helpers
def _pad_to_k(scores, positions, k: int, distance: str):
    """Pads `[b, m]` scores / int positions (m <= k) to `[b, k]`: the worst score and position -1."""
    missing = k - tf.shape(scores)[1]
    worst = float("-inf") if distance == "dot_product" else float("inf")
    scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=worst)
    positions = tf.pad(positions, [[0, 0], [0, missing]], constant_values=-1)
    return tf.ensure_shape(scores, [None, k]), tf.ensure_shape(positions, [None, k])


def _ids_at(ids, positions):
    """`ids[positions]`, with `b""` where the position is -1 (padding)."""
    found = tf.gather(ids, tf.maximum(positions, 0))
    return tf.where(positions >= 0, found, tf.constant(b"", tf.string))


def _route(queries, domain, searches, k: int):
    """Answers each row of `queries` with `searches[domain[row]]`; returns `[B, K]` scores and ids."""
    queries = tf.convert_to_tensor(queries, tf.float32)
    domain = domain_indices(domain, len(searches))
    rows = tf.range(tf.shape(queries)[0])
    parts = tf.dynamic_partition(queries, domain, len(searches))
    where = tf.dynamic_partition(rows, domain, len(searches))
    answers = [search(part) for search, part in zip(searches, parts)]
    scores = tf.dynamic_stitch(where, [a[0] for a in answers])
    ids = tf.dynamic_stitch(where, [a[1] for a in answers])
    return tf.ensure_shape(scores, [None, k]), tf.ensure_shape(ids, [None, k])


def _as_ids(ids, num_items: int) -> np.ndarray:
    """Item ids as a bytes array of shape `[num_items]` (str are UTF-8 encoded, numbers printed)."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != num_items:
        raise ValueError(f"`ids` must have shape [{num_items}] (one per embedding row). "
                         f"Received: ids.shape={arr.shape}")
    if arr.dtype.kind == "S":
        return arr
    if arr.dtype.kind == "U":
        return np.char.encode(arr, "utf-8")
    return np.array([i if isinstance(i, bytes) else str(i).encode("utf-8") for i in arr.tolist()],
                    dtype=object).astype(bytes)


def _as_embeddings(embeddings, name="embeddings") -> np.ndarray:
    arr = np.asarray(embeddings)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"`{name}` must be a non-empty [n, d] matrix. Received: {name}.shape={arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"`{name}` must be floating point. Received: {name}.dtype={arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(f"`distance` must be one of {DISTANCES}. Received: distance={distance!r}")


def _check_k(k):
    if not is_int(k) or k < 1:
        raise ValueError(f"`k` must be an integer >= 1. Received: k={k!r}")


def _check_per_domain(embeddings: Sequence, ids: Sequence) -> None:
    if not embeddings or len(ids) != len(embeddings):
        raise ValueError(f"`embeddings` and `ids` must be non-empty lists of the same length (one entry per "
                         f"domain). Received: {len(embeddings)} and {len(ids)} entries")


class _Routed(tf.Module):
    """Shared `__call__` of the multi-domain indexes: traced for int32 and int64 `[B]` domains at
    construction, so a saved module is callable after reload with either dtype."""

    def _trace(self):
        for dtype in (tf.int32, tf.int64):
            self.__call__.get_concrete_function(tf.TensorSpec([None, self.dimension], tf.float32),
                                                tf.TensorSpec([None], dtype))

    @tf.function
    def __call__(self, queries, domain):
        """Top-K items of each row's domain.

        Args:
            queries: float32 `[B, d]` query embeddings.
            domain: int `[B]` or `[B, 1]`, each row's domain index in `[0, num_domains)`.

        Returns:
            `(scores, ids)`: float32 `[B, K]` scores, best first, and string `[B, K]` item ids
            (`-inf` / `b""` pad a domain with fewer than K items).
        """
        return _route(queries, domain, self._searches(), self.k)

    @property
    def num_domains(self) -> int:
        return len(self._searches())

    def serving_function(self):
        """A `tf.function` over named inputs `queries` [B, d] float32 and `domain` [B] int64 with
        named outputs `scores` and `ids`: the `serving_default` signature of `save_index`."""

        @tf.function(input_signature=[tf.TensorSpec([None, self.dimension], tf.float32, name="queries"),
                                      tf.TensorSpec([None], tf.int64, name="domain")])
        def serve(queries, domain):
            scores, ids = self(queries, domain)
            return {"scores": scores, "ids": ids}

        return serve


# ------------------------------------------------------------------ ScaNN
@dataclasses.dataclass(frozen=True)
class BuildReport:
    """What `build_domain_index` built and measured for one domain.

    Args:
        items: items of the domain (n).
        leaves: leaves of the tree (0 for brute force).
        leaves_to_search: leaves searched per query (0 for brute force).
        k: K.
        recall: recall@K of the index against exact search on the evaluation queries.
        build_seconds: seconds to train and serialize the searcher (not the recall check).
        brute_force: True when the domain is scored by brute force (fewer than
            `IndexConfig.brute_force_below` items).
        tuning: `[(leaves searched, candidates re-scored, recall@K), ...]` measured while tuning
            for `IndexConfig.target_recall` (empty without tuning); the last is the one kept.
    """

    items: int
    leaves: int
    leaves_to_search: int
    k: int
    recall: float
    build_seconds: float
    brute_force: bool
    tuning: Tuple[Tuple[int, int, float], ...] = ()

    def as_dict(self) -> dict:
        """`{"items", "leaves", "leaves_to_search", "k", "recall@k", "build_seconds", "brute_force"}`, and
        when tuned `"reorder"` (candidates re-scored) and `"tuning"` (`[[leaves, reorder, recall@K], ...]`)."""
        out = {"items": self.items, "leaves": self.leaves, "leaves_to_search": self.leaves_to_search,
               "k": self.k, "recall@k": round(self.recall, 4), "build_seconds": round(self.build_seconds, 3),
               "brute_force": self.brute_force}
        if self.tuning:
            out["reorder"] = self.tuning[-1][1]
            out["tuning"] = [[n, m, round(r, 4)] for n, m, r in self.tuning]
        return out


class DomainIndex(tf.Module):
    """One domain's ScaNN searcher and its item ids, built by `build_domain_index`.

    Holds the searcher's state (`scann_ops.ScannState`, variables) and recreates the searcher in
    the graph on first use. `report` describes the build (see `BuildReport`).

    Args:
        state: the `ScannState` of a searcher built with `scann.scann_ops.builder`.
        ids: `[n]` item ids (bytes / str), in the searcher's row order.
        k: K, the number of neighbours a query returns.
        dimension: the embedding size d.
        distance: `"dot_product"` or `"squared_l2"`, as the searcher was built with.
        build_report: the `BuildReport` of the build, if any (a Python attribute, not saved).
        domain_name: the domain's name (any string; `tf.Module` names must be identifiers, so it
            is kept apart from the module name).
        leaves_to_search: leaves searched per query, overriding the searcher's own (None: the
            searcher's, as built); fixed in the graph when the index is traced.
        pre_reorder_num_neighbors: candidates re-scored exactly, overriding the searcher's own
            (None: as built), fixed the same way.

    Call arguments:
        queries: float32 `[B, d]` query embeddings.

    Returns:
        `(scores, ids)`: float32 `[B, K]` and string `[B, K]`, best first, padded with the worst
        score and `b""` when the domain has fewer than K items.
    """

    def __init__(self, state, ids, k: int, dimension: int, distance: str = "dot_product",
                 build_report: Optional["BuildReport"] = None, domain_name: str = "domain",
                 leaves_to_search: Optional[int] = None, pre_reorder_num_neighbors: Optional[int] = None):
        super().__init__(name="domain_index")
        _check_k(k)
        _check_distance(distance)
        self.state = state
        self.ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="ids")
        self.k = int(k)
        self.dimension = int(dimension)
        self.distance = distance
        self.domain_name = str(domain_name)
        self.leaves_to_search = leaves_to_search
        self.pre_reorder_num_neighbors = pre_reorder_num_neighbors
        self._searcher_node = f"scann_searcher_{uuid.uuid4().hex}"
        # Traced here: TF counts a method's traces over all instances in its calls, and a build of
        # many domains would then warn about "excessive retracing" of what is one trace each.
        self.searcher_handle.get_concrete_function()
        # A dataclass, not a dict: `tf.Module` would wrap a dict attribute into a tracked wrapper.
        self.build_report = build_report

    @property
    def report(self) -> dict:
        """The build report as a dict (`BuildReport.as_dict`), `{}` when built elsewhere."""
        return self.build_report.as_dict() if self.build_report is not None else {}

    @tf.function(input_signature=[])
    def searcher_handle(self):
        """The searcher's resource handle, recreated from `state` (once per loaded function)."""
        from scann.scann_ops.py import scann_ops  # registers the ScaNN ops; only ScaNN indexes need it

        s = self.state
        # `ScannState.recreate_handle` is not used: its graph is the same for every searcher, and
        # after `tf.saved_model.load` every domain then got the searcher of whichever domain ran
        # first (seen with scann 1.3.2 / TF 2.16). A node name unique to this index keeps them
        # apart; the empty shared_name keeps the resource private to the kernel, freed with it.
        return scann_ops.tensors_to_scann(s.dataset, s.scann_config, s.serialized_partitioner,
                                          s.datapoint_to_token, s.ah_codebook, s.hashed_dataset,
                                          s.int8_dataset, s.int8_multipliers, s.dp_norms,
                                          name=self._searcher_node)

    def search_positions(self, queries, leaves_to_search: Optional[int] = None,
                         pre_reorder_num_neighbors: Optional[int] = None):
        """`(scores [b, K], row positions [b, K])` of `queries` (graph or eager); position -1 pads.
        `leaves_to_search` and `pre_reorder_num_neighbors` override the index's own for this search."""
        from scann.scann_ops.py import scann_ops

        searcher = scann_ops.ScannSearcher(self.searcher_handle())
        # Parallel over the queries of a batch; ScaNN runs small batches on the calling thread.
        result = searcher.search_batched_parallel(tf.convert_to_tensor(queries, tf.float32),
                                                  final_num_neighbors=self.k,
                                                  pre_reorder_num_neighbors=(pre_reorder_num_neighbors
                                                                             or self.pre_reorder_num_neighbors),
                                                  leaves_to_search=leaves_to_search or self.leaves_to_search)
        return _pad_to_k(result.distances, result.indices, self.k, self.distance)

    def search(self, queries):
        """`(scores, ids)` of `queries` (graph or eager); see the class docstring."""
        scores, positions = self.search_positions(queries)
        return scores, _ids_at(self.ids, positions)

    @tf.function
    def __call__(self, queries):
        return self.search(queries)


class MultiDomainIndex(_Routed):
    """One ScaNN `DomainIndex` per domain, routing each row of a batch to its domain's index.

    Rows are split by domain, each domain's searcher answers its own rows, and the answers are
    stitched back in row order (see the module docstring). Saving it needs nothing special; loading
    it needs the ScaNN ops registered (`import scann`, or use `load_index`).

    Args:
        domains: one `DomainIndex` per domain, in domain-index order, all with the same K,
            dimension and distance.
        name: module name.

    Call arguments:
        queries: float32 `[B, d]` query embeddings.
        domain: int `[B]` or `[B, 1]`, each row's domain index in `[0, num_domains)`.

    Returns:
        `(scores, ids)`: float32 `[B, K]` and string `[B, K]` of each row's domain, best first.
    """

    def __init__(self, domains: Sequence[DomainIndex], name: Optional[str] = None):
        super().__init__(name=name)
        domains = list(domains)
        if not domains or not all(isinstance(d, DomainIndex) for d in domains):
            raise ValueError(f"`domains` must be a non-empty list of `DomainIndex`. Received: domains={domains!r}")
        shapes = {(d.k, d.dimension, d.distance) for d in domains}
        if len(shapes) != 1:
            raise ValueError(f"All domains must share K, dimension and distance. Received: {sorted(shapes)}")
        self.domains = domains
        self.k, self.dimension, self.distance = shapes.pop()
        self._trace()

    def _searches(self):
        return [d.search for d in self.domains]

    @property
    def report(self) -> Dict[str, dict]:
        return {d.domain_name: d.report for d in self.domains}


# ------------------------------------------------------------------ exact
class ExactDomainIndex(_Routed):
    """Exact top-K per domain with stock TensorFlow ops, with `MultiDomainIndex`'s call signature.

    Holds each domain's embedding matrix `E_d` `[n_d, d]` and ids as variables. A row of domain
    `d` is scored against `E_d` only, `s = q E_d^T` (dot product) or `s = |q - e|^2` (squared
    L2), and `tf.math.top_k` keeps the best `min(K, n_d)`, padded to K. Routing is the same
    partition / stitch as `MultiDomainIndex`, so no other domain's item is ever scored (no mask).

    Args:
        embeddings: one `[n_d, d]` float matrix per domain, in domain-index order.
        ids: one `[n_d]` array of item ids (bytes / str) per domain.
        k: K, the number of items a query returns.
        distance: `"dot_product"` or `"squared_l2"`.
        name: module name.

    Call arguments:
        queries, domain: as `MultiDomainIndex` (both share `_Routed.__call__`), with the same
            `(scores, ids)` returned.
    """

    def __init__(self, embeddings: Sequence, ids: Sequence, k: int = 100, distance: str = "dot_product",
                 name: Optional[str] = None):
        super().__init__(name=name)
        _check_k(k)
        _check_distance(distance)
        embeddings = [_as_embeddings(e, f"embeddings[{i}]") for i, e in enumerate(embeddings)]
        _check_per_domain(embeddings, ids)
        dims = {e.shape[1] for e in embeddings}
        if len(dims) != 1:
            raise ValueError(f"All domains' embeddings must have the same size. Received: {sorted(dims)}")
        self.k, self.dimension, self.distance = int(k), dims.pop(), distance
        self.embeddings = [tf.Variable(e, trainable=False, name=f"embeddings_{i}")
                           for i, e in enumerate(embeddings)]
        self.ids = [tf.Variable(_as_ids(i, e.shape[0]), dtype=tf.string, trainable=False, name=f"ids_{d}")
                    for d, (i, e) in enumerate(zip(ids, embeddings))]
        self._trace()

    def _search_one(self, domain: int):
        table, ids = self.embeddings[domain], self.ids[domain]
        k = min(self.k, int(table.shape[0]))

        def search(queries):
            scores = tf.linalg.matmul(queries, table, transpose_b=True)
            if self.distance == "squared_l2":
                # |q - e|^2 = |q|^2 - 2 q.e + |e|^2; top_k takes the largest, so rank its negation.
                sq = (tf.reduce_sum(tf.square(queries), axis=1, keepdims=True) - 2.0 * scores
                      + tf.reduce_sum(tf.square(table), axis=1)[tf.newaxis, :])
                best, positions = tf.math.top_k(-sq, k=k)
                best = -best
            else:
                best, positions = tf.math.top_k(scores, k=k)
            best, positions = _pad_to_k(best, positions, self.k, self.distance)
            return best, _ids_at(ids, positions)

        return search

    def _searches(self):
        return [self._search_one(d) for d in range(len(self.embeddings))]


# ------------------------------------------------------------------ build and measure
def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int, distance: str = "dot_product"):
    """Exact top-`k` rows of `embeddings` for each query, in numpy, best first.

    Args:
        embeddings: float32 `[n, d]`.
        queries: float32 `[q, d]`.
        k: neighbours per query (at most `n` are returned).
        distance: `"dot_product"` (largest first) or `"squared_l2"` (smallest first).

    Returns:
        `(scores [q, min(k, n)], positions [q, min(k, n)])`.
    """
    k = min(k, embeddings.shape[0])
    scores_out, positions_out = [], []
    for start in range(0, queries.shape[0], _EVAL_CHUNK):
        q = queries[start:start + _EVAL_CHUNK]
        s = q @ embeddings.T
        if distance == "squared_l2":
            s = -((q * q).sum(1, keepdims=True) - 2.0 * s + (embeddings * embeddings).sum(1)[None, :])
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (len(q), 1))
        top_s = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        positions_out.append(np.take_along_axis(top, order, axis=1))
        scores_out.append(np.take_along_axis(top_s, order, axis=1))
    scores, positions = np.concatenate(scores_out), np.concatenate(positions_out)
    return (-scores if distance == "squared_l2" else scores), positions


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of `|found ∩ exact| / |exact|` (row positions; -1 in `found` is padding)."""
    hits = [len(np.intersect1d(f[f >= 0], e)) for f, e in zip(found, exact)]
    return float(np.sum(hits) / exact.size)


def sample_queries(embeddings: np.ndarray, num_queries: int, seed: int = 0) -> np.ndarray:
    """Corpus vectors plus Gaussian noise (`QUERY_NOISE` of the per-dimension std), as queries."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, embeddings.shape[0], size=num_queries)
    noise = rng.normal(size=(num_queries, embeddings.shape[1])) * (QUERY_NOISE * embeddings.std(axis=0))
    return (embeddings[rows] + noise).astype(np.float32)


def tuning_grid(leaves: int) -> List[int]:
    """Leaves-to-search counts tried when tuning for a recall: 1, 2, 3, 4, 6, 9, 13, ... (x1.5), then `leaves`."""
    out, n = [], 1
    while n < leaves:
        out.append(n)
        n = max(n + 1, int(n * 1.5))
    return out + [leaves]


def build_domain_index(embeddings, ids, config: IndexConfig = IndexConfig(), queries=None, seed: int = 0,
                       name: str = "domain") -> DomainIndex:
    """Builds one domain's ScaNN index and measures its recall@K against exact search.

    A domain of at least `config.brute_force_below` items gets a tree of
    `config.leaves_for(n)` leaves searching `config.leaves_to_search_for(n, leaves)` of them, scored
    by anisotropic asymmetric hashing and reordered exactly over `K * reorder_multiplier`
    candidates; a smaller domain gets ScaNN's exact brute-force scorer.

    Args:
        embeddings: float `[n, d]` item embeddings of the domain.
        ids: `[n]` item ids (bytes / str) in the same order.
        config: an `IndexConfig`.
        queries: optional float `[q, d]` evaluation queries (e.g. user embeddings of the domain);
            None: `config.eval_queries` noisy corpus vectors (`sample_queries`).
        seed: seeds the sampled evaluation queries.
        name: the domain's name (in the `LOW RECALL` warning and as the report's key).

    Returns:
        A `DomainIndex` whose `report` is `{"items", "leaves", "leaves_to_search", "k",
        "recall@k", "build_seconds", "brute_force"}`. A recall below `config.min_recall` is
        logged as a warning starting with `LOW RECALL`.
    """
    from scann.scann_ops.py import scann_ops

    if not isinstance(config, IndexConfig):
        raise ValueError(f"`config` must be an `IndexConfig`. Received: config={config!r}")
    embeddings = _as_embeddings(embeddings)
    n, dim = embeddings.shape
    ids = _as_ids(ids, n)
    k = config.num_neighbors
    brute_force = n < config.brute_force_below
    leaves = 0 if brute_force else config.leaves_for(n)
    if leaves > n:
        raise ValueError(f"`leaves` must be <= the number of items of a domain. Received: leaves={leaves} "
                         f"for domain {name!r} of {n} items")
    leaves_to_search = 0 if brute_force else config.leaves_to_search_for(n, leaves)
    if queries is None:
        queries = sample_queries(embeddings, config.eval_queries, seed=seed)
    queries = _as_embeddings(queries, "queries")
    if queries.shape[1] != dim:
        raise ValueError(f"`queries` must have the embeddings' size {dim}. "
                         f"Received: queries.shape={queries.shape}")

    start = time.perf_counter()
    builder = scann_ops.builder(embeddings, k, config.distance)
    if brute_force:
        builder = builder.score_brute_force()
    else:
        # ScaNN trains on at most `training_sample_size` points; asking for more than n samples all.
        sample = min(config.training_sample_size, n)
        threshold = (config.anisotropic_quantization_threshold if config.distance == "dot_product"
                     else float("nan"))
        builder = builder.tree(num_leaves=leaves, num_leaves_to_search=leaves_to_search,
                               training_sample_size=sample)
        builder = builder.score_ah(config.dimensions_per_block,
                                   anisotropic_quantization_threshold=threshold,
                                   training_sample_size=sample)
        if config.reorder_multiplier:
            builder = builder.reorder(k * config.reorder_multiplier)
    state = builder.build().serialize_to_module()
    build_seconds = time.perf_counter() - start

    index = DomainIndex(state, ids, k=k, dimension=dim, distance=config.distance, domain_name=name)
    _, exact = exact_top_k(embeddings, queries, k, config.distance)
    tuning = []
    if not brute_force and config.target_recall is not None and config.leaves_to_search is None:
        # The fewest leaves reaching the target with the configured reordering; where even every leaf
        # falls short (the hashing's error), twice, four and eight times the candidates re-scored.
        base = k * config.reorder_multiplier
        for reorder in ([base, 2 * base, 4 * base, 8 * base] if base else [0]):
            for tried in tuning_grid(leaves):
                _, found = index.search_positions(queries, leaves_to_search=tried,
                                                  pre_reorder_num_neighbors=reorder or None)
                tuning.append((tried, reorder, recall_at_k(found.numpy(), exact)))
                if tuning[-1][2] >= config.target_recall:
                    break
            if tuning[-1][2] >= config.target_recall:
                break
        leaves_to_search, reorder, recall = tuning[-1]
        index.leaves_to_search = leaves_to_search
        index.pre_reorder_num_neighbors = reorder or None
    else:
        _, found = index.search_positions(queries)
        recall = recall_at_k(found.numpy(), exact)
    index.build_report = BuildReport(items=n, leaves=leaves, leaves_to_search=leaves_to_search, k=k,
                                     recall=recall, build_seconds=build_seconds, brute_force=brute_force,
                                     tuning=tuple(tuning))
    if recall < config.min_recall:
        logger.warning("LOW RECALL: domain %r recall@%d = %.3f < min_recall %.2f (items=%d, leaves=%d, "
                       "leaves_to_search=%d); raise leaves_to_search or reorder_multiplier",
                       name, k, recall, config.min_recall, n, leaves, leaves_to_search)
    return index


def build_multi_domain_index(embeddings: Sequence, ids: Sequence, config: IndexConfig = IndexConfig(),
                             queries: Optional[Sequence] = None, seed: int = 0,
                             domain_names: Optional[Sequence[str]] = None,
                             on_domain_built: Optional[Callable[[str, dict], None]] = None
                             ) -> Tuple[MultiDomainIndex, Dict[str, dict]]:
    """Builds a `MultiDomainIndex`: one `build_domain_index` per domain.

    Args:
        embeddings: one float `[n_d, d]` matrix per domain, in domain-index order.
        ids: one `[n_d]` id array per domain.
        config: an `IndexConfig`, shared by the domains (the auto parameters scale per domain).
        queries: optional list of per-domain evaluation queries (entries may be None).
        seed: seeds the sampled evaluation queries (domain `i` uses `seed + i`).
        domain_names: names of the domains (report keys); default `"0"`, `"1"`, ...
        on_domain_built: called with `(domain name, build report)` as each domain's index is done
            (a large domain takes minutes: `mdr export` prints a line per domain).

    Returns:
        `(index, report)`: the `MultiDomainIndex` and `{domain name: build report}`.
    """
    embeddings, ids = list(embeddings), list(ids)
    _check_per_domain(embeddings, ids)
    names = [str(i) for i in range(len(embeddings))] if domain_names is None else [str(n) for n in domain_names]
    if len(names) != len(embeddings) or len(set(names)) != len(names):
        raise ValueError(f"`domain_names` must name each domain once. Received: domain_names={domain_names!r}")
    queries = [None] * len(embeddings) if queries is None else list(queries)
    if len(queries) != len(embeddings):
        raise ValueError(f"`queries` must have one entry per domain. Received: {len(queries)} entries")
    domains: List[DomainIndex] = []
    for d, (e, i, q) in enumerate(zip(embeddings, ids, queries)):
        domains.append(build_domain_index(e, i, config, queries=q, seed=seed + d, name=names[d]))
        if on_domain_built is not None:
            on_domain_built(names[d], domains[-1].report)
    index = MultiDomainIndex(domains, name="multi_domain_index")
    return index, {d.domain_name: d.report for d in domains}


# ------------------------------------------------------------------ save / load
def save_index(index: _Routed, export_dir: str) -> None:
    """Saves a `MultiDomainIndex` or `ExactDomainIndex` as a SavedModel with a `serving_default`
    signature (`queries`, `domain` -> `scores`, `ids`); the module's `__call__` is kept too."""
    tf.saved_model.save(index, export_dir, signatures={artifacts.DEFAULT_SIGNATURE: index.serving_function()})


def load_index(export_dir: str):
    """Loads a SavedModel written by `save_index`, registering the ScaNN ops first (a ScaNN index's
    graph holds `Scann>*` ops, unknown to TensorFlow until `scann` is imported)."""
    import scann  # noqa: F401  (registers the custom ops)

    return tf.saved_model.load(export_dir)
