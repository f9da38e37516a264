"""Privacy: secure aggregation among neighbours (``secagg``) and DP-SGD with its accountant
(``dp``, imported on use: it loads Opacus)."""

from meshlearn.privacy.secagg import (
    KEY_BYTES,
    FixedPoint,
    PairwiseMasks,
    aggregate_usable,
    expected_senders,
    generate_keys,
    public_bytes,
    public_keys,
)

__all__ = ["KEY_BYTES", "FixedPoint", "PairwiseMasks", "aggregate_usable", "expected_senders", "generate_keys",
           "public_bytes", "public_keys"]
