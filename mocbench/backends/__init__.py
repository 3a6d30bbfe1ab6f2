"""Built-in attention backends; importing this package registers them."""

from mocbench.backends import (  # noqa: F401  (registration side effects)  # noqa: F401  (the peer video families)
    dense,
    fixed_sparse,
    moc,
    radial,
    sliding_tile,
    svg,  # noqa: F401,E402
    vmoba,  # noqa: F401,E402
    vsa,  # noqa: F401,E402
)
