"""Converters from trained weights to ONNX / OpenVINO IR (conversion-only dependencies live here)."""
