"""Synthetic multi-domain interaction logs with a planted structure (`mdr generate`).

The planted structure is what the models of mdr must find, so that learning can be tested:
  - users and items have latent interests (items cluster by category);
  - each domain d transforms user interest (`u_d = M_d u`), favours its own categories and has its
    own item popularity, so one domain-blind user embedding provably loses against a domain-aware one;
  - domains differ in size (geometric weights) and users and items overlap across domains
    (about half of the users and about four fifths of the items are active in two or more);
  - click probability also depends on the user's earlier clicks, and the domain decides which
    earlier clicks matter (same-domain history, other-domain history, or just the last click);
  - categorical and numeric side features, some informative (age group, category, price), some noise;
  - timestamps spread over `days` days, in causal order per user.

The output is plain CSV (`events.csv`, header first) that the `synthetic` source of the Beam job reads,
plus `generator.json` with the parameters and measured overlap statistics.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

EVENTS_FILENAME = "events.csv"
INFO_FILENAME = "generator.json"
COLUMNS = ("user_id", "item_id", "domain", "label", "timestamp", "gender", "age_group", "city",
           "tenure_days", "category", "brand", "price")
START_TIMESTAMP = 1767225600  # 2026-01-01T00:00:00Z
# Which earlier clicks drive a click in a domain, by domain index modulo 3.
SEQUENCE_PATTERNS = ("same_domain_history", "other_domain_history", "last_click")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and strengths of the planted structure.

    Args:
        num_users: users.
        num_items: items.
        num_domains: domains (3 or more to match the papers; 2 works).
        num_categories: item categories (the latent clusters).
        mean_events: mean events per user (geometric, at least 2).
        max_events: cap on events per user.
        days: time span of the log.
        latent_dim: dimension of the latent interests.
        domain_shift: strength of the per-domain transform of user interest.
        sequence_strength: weight of the history term in the click logit.
        segment_affinity: strength of a per-domain taste of each age group: in domain d, users
            of age group a favour category `favoured[d, a]` (a domain-specific interaction of a user
            feature with an item feature, which one model for all domains cannot express without
            knowing the domain). An age group's favourite changes from one domain to the next and
            a domain's favourites are distinct, so with 5 categories (as many as age groups) every
            category is favoured in every domain by one group. 0 disables it.
        balanced_domains: every user active in every domain, domains of equal size, items in every
            domain, one popularity, click bias and category bias for all domains, and equal age
            groups independent of interest: the domains differ only by their transforms and the
            segment tastes (for learning tests of domain awareness). Default False (geometric
            sizes, partial overlap).
        popularity_exposure: share of exposures drawn by domain popularity (the rest by relevance
            to the user); lower values make the clicks say more about the user than about the items.
        user_interest: scale of each user's lasting latent interest in exposures and clicks; 0
            leaves the behaviour sequence as the only evidence of what a user likes now.
        sequence_windows: per domain, a `(start, end)` window of the user's recent clicks
            (0 = the most recent, any domain): the history term is `sequence_strength` when the
            candidate's category is among those clicks, in place of the default patterns. The
            domain decides which *positions* of the sequence matter, which attention by content
            alone cannot tell. Empty: the default patterns.
        single_domain_users: every user active in its home domain only (when the domain is a user
            attribute: an age group, a region, an app), items still shared across domains. Default
            False (about half of the users in two domains).
        seed: random seed; equal seeds give byte-identical output.
    """

    num_users: int = 2000
    num_items: int = 1000
    num_domains: int = 3
    num_categories: int = 20
    mean_events: float = 30.0
    max_events: int = 200
    days: int = 14
    latent_dim: int = 16
    domain_shift: float = 1.0
    sequence_strength: float = 1.5
    segment_affinity: float = 0.0
    balanced_domains: bool = False
    popularity_exposure: float = 0.5
    user_interest: float = 1.0
    sequence_windows: tuple = ()
    single_domain_users: bool = False
    seed: int = 0

    def __post_init__(self):
        for name in ("num_users", "num_items", "num_categories", "max_events", "days", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1. Received: {name}={getattr(self, name)}")
        if self.num_domains < 2:
            raise ValueError(f"num_domains must be >= 2. Received: num_domains={self.num_domains}")
        if not 0.0 <= self.popularity_exposure <= 1.0:
            raise ValueError("popularity_exposure must be in [0, 1]. "
                             f"Received: popularity_exposure={self.popularity_exposure}")
        if self.sequence_windows and (len(self.sequence_windows) != self.num_domains or any(
                not (0 <= lo < hi) for lo, hi in self.sequence_windows)):
            raise ValueError("sequence_windows must hold one (start, end) window, 0 <= start < end, per domain. "
                             f"Received: sequence_windows={self.sequence_windows}")
        if self.mean_events < 2:
            raise ValueError(f"mean_events must be >= 2. Received: mean_events={self.mean_events}")


def domain_names(num_domains: int):
    return [f"d{d}" for d in range(num_domains)]


def generate(output_dir: str, config: SyntheticConfig = SyntheticConfig()) -> dict:
    """Writes `events.csv` and `generator.json` into `output_dir`; returns the info dict."""
    c = config
    rng = np.random.default_rng(c.seed)
    k, D = c.latent_dim, c.num_domains
    names = domain_names(D)

    # Items: latent vectors clustered by category, a brand tied to the category, a price per category.
    centers = rng.normal(size=(c.num_categories, k))
    item_cat = rng.integers(c.num_categories, size=c.num_items)
    item_vec = (centers[item_cat] + 0.6 * rng.normal(size=(c.num_items, k))) / np.sqrt(k)
    item_brand = item_cat * 5 + rng.integers(5, size=c.num_items)
    cat_price = np.exp(rng.normal(3.0, 1.0, size=c.num_categories))
    item_price = np.round(cat_price[item_cat] * np.exp(rng.normal(0, 0.3, size=c.num_items)), 2)
    base_pop = rng.zipf(1.6, size=c.num_items).clip(max=1000).astype(float)

    # Domains: geometric sizes, an interest transform, favoured categories, own popularity.
    domain_weight = np.ones(D) if c.balanced_domains else 0.55 ** np.arange(D)
    domain_weight /= domain_weight.sum()
    transforms = [np.eye(k) + c.domain_shift * rng.normal(size=(k, k)) / np.sqrt(k) for _ in range(D)]
    cat_bias = rng.normal(0, 1.0, size=(D, c.num_categories))
    domain_bias = rng.normal(-1.3, 0.5, size=D)
    pop = base_pop[None, :] * np.exp(rng.normal(0, 1.2, size=(D, c.num_items)))
    if c.balanced_domains:
        # Nothing but the planted tastes may differ, or per-domain statistics would name the domain.
        cat_bias[:] = 0.0
        domain_bias[:] = -1.3
        pop[:] = base_pop[None, :]

    # Item availability: a home domain, 80% also in one or more others (ADI: 79% of items in 2+).
    item_in = np.zeros((D, c.num_items), dtype=bool)
    item_in[rng.choice(D, size=c.num_items, p=domain_weight), np.arange(c.num_items)] = True
    extra = rng.random(c.num_items) < 0.9
    for i in np.flatnonzero(extra):
        others = [d for d in range(D) if not item_in[d, i]]
        item_in[rng.choice(others), i] = True
    if c.balanced_domains:
        item_in[:] = True
    for d in range(D):  # every domain needs items
        if not item_in[d].any():
            item_in[d, rng.integers(c.num_items)] = True

    # Users: interest near one or two favourite categories; age group follows the favourite category.
    fav = rng.integers(c.num_categories, size=(c.num_users, 2))
    user_vec = (centers[fav[:, 0]] + 0.5 * centers[fav[:, 1]] + 0.7 * rng.normal(size=(c.num_users, k))) / np.sqrt(k)
    age_group = np.where(rng.random(c.num_users) < 0.8, fav[:, 0] % 5, rng.integers(5, size=c.num_users))
    gender = rng.integers(2, size=c.num_users)
    city = rng.integers(30, size=c.num_users)
    tenure = np.round(np.exp(rng.normal(5, 1, size=c.num_users)), 1)
    # Active domains: a home domain, half of the users also one more (ADI: 49% of users in 2+).
    user_in = np.zeros((c.num_users, D), dtype=bool)
    user_in[np.arange(c.num_users), rng.choice(D, size=c.num_users, p=domain_weight)] = True
    for u in np.flatnonzero((rng.random(c.num_users) < 0.5) & (not c.single_domain_users)):
        others = [d for d in range(D) if not user_in[u, d]]
        user_in[u, rng.choice(others, p=domain_weight[others] / domain_weight[others].sum())] = True
    if c.balanced_domains:
        user_in[:] = True
        # Equal age groups, independent of interest: otherwise an item's per-domain click rate says
        # which age group favours it there, and a domain-blind model reads the domain from that.
        age_group = np.random.default_rng([c.seed, 2]).permutation(np.arange(c.num_users) % 5)

    # Its own stream, so segment_affinity = 0 keeps the logs of earlier versions byte for byte.
    # favoured[d, a] = perm[(a + d) % C]: distinct within a domain, and an age group's favourite
    # differs from one domain to the next (the tastes conflict across domains).
    perm = np.random.default_rng([c.seed, 1]).permutation(c.num_categories)
    favoured = perm[(np.arange(5)[None, :] + np.arange(D)[:, None]) % c.num_categories]

    n_events = np.minimum(2 + rng.geometric(1.0 / (c.mean_events - 1), size=c.num_users) - 1, c.max_events)

    # Exposures (what the production system showed): half by domain popularity, half by relevance.
    user_dom_vec = c.user_interest * np.stack([user_vec @ transforms[d].T for d in range(D)], axis=1)  # [U, D, k]
    rows = []  # (user, domain, item, t)
    for u in range(c.num_users):
        doms = np.flatnonzero(user_in[u])
        p_dom = domain_weight[doms] / domain_weight[doms].sum()
        ev_dom = rng.choice(doms, size=n_events[u], p=p_dom)
        times = np.sort(rng.integers(0, c.days * 86400, size=n_events[u]))
        for d in doms:
            idx = np.flatnonzero(ev_dom == d)
            if idx.size == 0:
                continue
            pool = np.flatnonzero(item_in[d])
            rel = (item_vec[pool] @ user_dom_vec[u, d] + cat_bias[d, item_cat[pool]]
                   + c.segment_affinity * (item_cat[pool] == favoured[d, age_group[u]]))
            p_rel = np.exp(2.0 * (rel - rel.max()))
            p = (c.popularity_exposure * pop[d, pool] / pop[d, pool].sum()
                 + (1 - c.popularity_exposure) * p_rel / p_rel.sum())
            items = pool[rng.choice(pool.size, size=idx.size, p=p / p.sum())]
            for j, i in zip(idx, items):
                rows.append((u, d, i, times[j]))
    rows.sort(key=lambda r: (r[0], r[3]))
    ev = np.array(rows, dtype=np.int64)  # [N, 4], per user in time order

    # Click model, causal per user: logit = interest + domain category bias + history term + bias.
    users, doms, items, times = ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3]
    interest = np.einsum("nk,nk->n", user_dom_vec[users, doms], item_vec[items])
    logit_static = (1.5 * interest + cat_bias[doms, item_cat[items]] + domain_bias[doms]
                    + c.segment_affinity * (item_cat[items] == favoured[doms, age_group[users]]))
    labels = np.zeros(len(ev), dtype=np.int64)
    hist_dom = np.zeros((D, k))  # EMA of clicked item vectors per domain, for the current user
    last = np.zeros(k)
    clicks = []  # the current user's clicked categories, most recent last
    noise = rng.random(len(ev))
    current = -1
    for n in range(len(ev)):
        if users[n] != current:
            current = users[n]
            hist_dom[:] = 0.0
            last[:] = 0.0
            clicks = []
        d, v = doms[n], item_vec[items[n]]
        pattern = d % 3
        if c.sequence_windows:
            lo, hi = c.sequence_windows[d]
            history = c.sequence_strength * (item_cat[items[n]] in clicks[::-1][lo:hi])
        else:
            if pattern == 0:
                h = hist_dom[d]
            elif pattern == 1:
                h = (hist_dom.sum(axis=0) - hist_dom[d]) / max(D - 1, 1)
            else:
                h = last
            history = c.sequence_strength * np.sqrt(k) * float(v @ h)
        logit = logit_static[n] + history
        if noise[n] < 1.0 / (1.0 + np.exp(-logit)):
            labels[n] = 1
            hist_dom[d] = 0.6 * hist_dom[d] + 0.4 * v
            last = v
            clicks.append(item_cat[items[n]])

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, EVENTS_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(COLUMNS) + "\n")
        for n in range(len(ev)):
            u, i = users[n], items[n]
            f.write(f"u{u},i{i},{names[doms[n]]},{labels[n]},{START_TIMESTAMP + times[n]},"
                    f"{'FM'[gender[u]]},a{age_group[u]},c{city[u]},{tenure[u]},"
                    f"cat{item_cat[i]},b{item_brand[i]},{item_price[i]}\n")

    seen_user_doms = np.zeros((c.num_users, D), dtype=bool)
    seen_user_doms[users, doms] = True
    seen_item_doms = np.zeros((c.num_items, D), dtype=bool)
    seen_item_doms[items, doms] = True
    active_items = seen_item_doms.any(axis=1)
    info = {
        "config": dataclasses.asdict(c),
        "events": int(len(ev)),
        "domains": names,
        "events_per_domain": {names[d]: int((doms == d).sum()) for d in range(D)},
        "ctr_per_domain": {names[d]: round(float(labels[doms == d].mean()), 4) for d in range(D)},
        "users_in_2plus_domains": round(float((seen_user_doms.sum(1) >= 2).mean()), 4),
        "items_in_2plus_domains": round(float((seen_item_doms[active_items].sum(1) >= 2).mean()), 4),
        "sequence_pattern_per_domain": {
            names[d]: (f"clicks {c.sequence_windows[d][0]}..{c.sequence_windows[d][1] - 1} back"
                       if c.sequence_windows else SEQUENCE_PATTERNS[d % 3]) for d in range(D)},
        "files": [EVENTS_FILENAME],
    }
    with open(os.path.join(output_dir, INFO_FILENAME), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return info
