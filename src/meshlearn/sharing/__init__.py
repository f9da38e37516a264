"""Sharing schemes: what nodes exchange and how received models are aggregated."""

from meshlearn.sharing.base import Inbox, Payload, Sharing
from meshlearn.sharing.full import FullSharing

SHARINGS: dict[str, type[Sharing]] = {"full": FullSharing}


def build(name: str, **options) -> Sharing:
    if name not in SHARINGS:
        raise ValueError(f"sharing.name = {name!r} is unknown; use one of {sorted(SHARINGS)}")
    return SHARINGS[name](**options)


__all__ = ["Inbox", "Payload", "Sharing", "FullSharing", "SHARINGS", "build"]
