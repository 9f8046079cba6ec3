"""Few-shot episodes: k support (image, mask) pairs and one query.

Rules: supports come only from lesion images; never from the query's near-duplicate group; the
same seed gives the same episodes. Queries from normal (lesion-free) images only on request, to
measure false positives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import ImageSet


@dataclass(frozen=True)
class Episode:
    support: tuple[int, ...]   # indices into the support set
    query: int                 # index into the query set


class EpisodeSampler:
    def __init__(self, query_set: ImageSet, support_set: ImageSet | None = None,
                 include_normal_queries: bool = False):
        """support_set=None: supports come from the query set itself (the held-out cohort)."""
        self.query_set = query_set
        self.support_set = support_set if support_set is not None else query_set
        self.support_candidates = [i for i in range(len(self.support_set)) if self.support_set.has_lesion(i)]
        self.query_candidates = [i for i in range(len(query_set))
                                 if include_normal_queries or query_set.has_lesion(i)]
        if not self.support_candidates:
            raise ValueError("no lesion images available as supports")
        if not self.query_candidates:
            raise ValueError("no query images available")
        self._same_pool = self.support_set is self.query_set

    def _allowed_supports(self, query: int) -> list[int]:
        if not self._same_pool:
            # different pools are already split by duplicate group, but check names anyway
            qname = self.query_set.samples[query].rel_path
            return [i for i in self.support_candidates if self.support_set.samples[i].rel_path != qname]
        qgroup = self.query_set.groups[query]
        return [i for i in self.support_candidates if self.support_set.groups[i] != qgroup]

    def episode(self, rng: np.random.Generator, k: int, query: int | None = None,
                allow_fewer: bool = False) -> Episode:
        """allow_fewer: take fewer than k supports when fewer are allowed (tiny user data sets)."""
        if not 1 <= k <= 5:
            raise ValueError(f"shots must be between 1 and 5, got {k}")
        if query is None:
            query = int(rng.choice(self.query_candidates))
        allowed = self._allowed_supports(query)
        if allow_fewer and allowed:
            k = min(k, len(allowed))
        if len(allowed) < k:
            raise ValueError(f"only {len(allowed)} supports available for query {query}, need {k}")
        support = tuple(int(i) for i in rng.choice(allowed, size=k, replace=False))
        return Episode(support, query)

    def fixed_episodes(self, n: int, k: int, seed: int) -> list[Episode]:
        """n reproducible episodes; queries cycle through all candidates (shuffled) before repeating."""
        rng = np.random.default_rng(seed)
        order: list[int] = []
        while len(order) < n:
            order += list(rng.permutation(self.query_candidates))
        return [self.episode(rng, k, int(q)) for q in order[:n]]
