"""Accuracy evaluation: protocols on disk, metrics, the embedding runner and plots.

    protos = [load_cfp(root, "FP")]
    result = evaluate(protos, FaceEmbedder(), crop="fiducials")

``plots`` needs matplotlib (the ``eval`` extra) and is imported only when asked for.
"""
