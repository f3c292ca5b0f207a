"""Accuracy evaluation: protocols on disk, metrics, the embedding runner, plots and the
detectors' face-finding rate (``detection_survey``).

    protos = [load_cfp(root, "FP")]
    result = evaluate(protos, FaceEmbedder(), crop="fiducials")

``plots`` needs matplotlib (the ``eval`` extra) and is imported only when asked for.
"""
