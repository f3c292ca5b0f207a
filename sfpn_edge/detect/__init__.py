"""Detectors: the Detector protocol and implementations."""
