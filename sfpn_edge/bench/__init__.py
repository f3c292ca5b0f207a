"""``python -m sfpn_edge.bench``: compare every backend x precision x thread count on this machine.

Layout: ``configs`` decides what to measure, ``model_source`` finds the weights (authors' or
synthetic), ``measure`` runs one configuration in a fresh subprocess (so cold start and peak RSS
are clean), ``stages`` times the pipeline pieces (both with ``timing``), ``report`` renders tables,
``plots`` draws PNGs.
Kept import-light: heavy libraries load inside the functions that need them.
"""
