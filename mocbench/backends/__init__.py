"""Built-in attention backends; importing this package registers them."""

from mocbench.backends import dense, fixed_sparse, moc  # noqa: F401  (registration side effects)
