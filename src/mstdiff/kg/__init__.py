"""Urban knowledge graph of base stations, TuckER embeddings, kNN graph and rate matrix.

Stages (each a directory with ``meta.json``; see :mod:`mstdiff.kg.stages`): :func:`build_kg_dir`
(``mstdiff kg build``), :func:`embed_kg_dir` (``mstdiff kg embed``); the transition stage
(``mstdiff kg transition``) is :func:`mstdiff.diffusion.discrete.transition_dir`.
"""

from mstdiff.kg.graph import graph_stats, knn_graph, rate_matrix, synthetic_knn_rate
from mstdiff.kg.stages import build_kg_dir, embed_kg_dir, stations_fingerprint
from mstdiff.kg.triples import (
    RELATIONS,
    KGOptions,
    KnowledgeGraph,
    attach_poi_context,
    build_knowledge_graph,
    load_poi_table,
    project_km,
)
from mstdiff.kg.tucker import (
    TuckER,
    TuckerConfig,
    evaluate_link_prediction,
    random_embedding_baseline,
    split_triples,
    train_tucker,
)

__all__ = [
    "RELATIONS",
    "KGOptions",
    "KnowledgeGraph",
    "TuckER",
    "TuckerConfig",
    "attach_poi_context",
    "build_kg_dir",
    "build_knowledge_graph",
    "embed_kg_dir",
    "evaluate_link_prediction",
    "graph_stats",
    "knn_graph",
    "load_poi_table",
    "project_km",
    "random_embedding_baseline",
    "rate_matrix",
    "split_triples",
    "stations_fingerprint",
    "synthetic_knn_rate",
    "train_tucker",
]
