"""Mixture of Contexts: anchors and candidates (structure), routing, implementations, accounting."""

from mocbench.backends.moc.backend import MoCBackend, MoCPlan  # noqa: F401
from mocbench.backends.moc.params import MoCParams  # noqa: F401
