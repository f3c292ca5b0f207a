"""sfpn-edge: pose-robust face verification at the edge with SqueezeFacePoseNet."""

__version__ = "0.1.0"
