"""Privacy building blocks: secure aggregation among neighbours (``secagg``)."""

from meshlearn.privacy.secagg import (
    KEY_BYTES,
    FixedPoint,
    PairwiseMasks,
    aggregate_usable,
    expected_senders,
    generate_keys,
    public_bytes,
    public_keys,
    setup_bytes,
)

__all__ = ["KEY_BYTES", "FixedPoint", "PairwiseMasks", "aggregate_usable", "expected_senders", "generate_keys",
           "public_bytes", "public_keys", "setup_bytes"]
