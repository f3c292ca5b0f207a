"""MobileNet v1 and v2 (1.0, 224×224) as fp32 .tflite files with random weights: the models of
XNNPACK's published Raspberry Pi 4 latencies, used to check tools/arm64_cost/model.py once.

    python tools/arm64_cost/reference_models.py OUT_DIR      # needs tensorflow (any CPU build)

Random weights, as in XNNPACK's own end2end benchmark: speed does not depend on the values.
Not a dependency of sfpn-edge; run it on the host, then `SFPN_ARM64_COST_REFERENCE=OUT_DIR tools/arm64-cost`.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(out: str) -> int:
    import tensorflow as tf

    Path(out).mkdir(parents=True, exist_ok=True)
    for name, build in (("mobilenet_v1", tf.keras.applications.MobileNet),
                        ("mobilenet_v2", tf.keras.applications.MobileNetV2)):
        model = build(input_shape=(224, 224, 3), alpha=1.0, weights=None)
        data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        (Path(out) / f"{name}.tflite").write_bytes(data)
        print(f"{name}.tflite: {len(data):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
