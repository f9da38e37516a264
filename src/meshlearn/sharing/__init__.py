"""Sharing schemes: what nodes exchange and how received models are aggregated."""

from meshlearn.sharing.base import (DenseSharing, Inbox, LinkInbox, PartialSharing, Payload, Sharing, dense_average,
                                    partial_average)
from meshlearn.sharing.choco import ChocoSharing
from meshlearn.sharing.full import FullSharing
from meshlearn.sharing.jwins import JWINSSharing
from meshlearn.sharing.quantize import QuantizeSharing
from meshlearn.sharing.random import RandomSharing
from meshlearn.sharing.topk import TopKSharing

SHARINGS: dict[str, type[Sharing]] = {
    cls.name: cls for cls in (FullSharing, RandomSharing, TopKSharing, ChocoSharing, QuantizeSharing, JWINSSharing)
}


__all__ = ["Inbox", "LinkInbox", "Payload", "dense_average", "Sharing", "DenseSharing", "PartialSharing", "partial_average",
           "FullSharing", "RandomSharing", "TopKSharing", "ChocoSharing", "QuantizeSharing", "JWINSSharing",
           "SHARINGS"]
