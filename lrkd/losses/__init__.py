"""Loss terms: pure functions of tensors, one ``LossTerm`` module each, composed by ``WeightedLoss``."""
from lrkd.losses.ce import CETerm, ce_targets, cross_entropy
from lrkd.losses.compose import LossInputError, LossTerm, NonFiniteLossError, WeightedLoss, mean_over_rows
from lrkd.losses.crsd import CRSDTerm, crsd_losses
from lrkd.losses.infonce import info_nce
from lrkd.losses.kd import KDTerm, kd_loss, kl_per_row
from lrkd.losses.latent import DISTANCES, LatentTerm, latent_alignment
from lrkd.losses.ordinal import ORDINAL_KINDS, OrdinalTerm, ordinal_loss
from lrkd.losses.rank import RANK_FORMS, RANK_SCORES, RankKDTerm, listwise_kd, ranknet_kd
from lrkd.losses.weights import balanced_class_weights, resolve_class_weight

__all__ = [
    "LossTerm", "WeightedLoss", "LossInputError", "NonFiniteLossError", "mean_over_rows",
    "CETerm", "cross_entropy", "ce_targets",
    "KDTerm", "kd_loss", "kl_per_row",
    "info_nce",
    "LatentTerm", "latent_alignment", "DISTANCES",
    "CRSDTerm", "crsd_losses",
    "OrdinalTerm", "ordinal_loss", "ORDINAL_KINDS",
    "RankKDTerm", "ranknet_kd", "listwise_kd", "RANK_FORMS", "RANK_SCORES",
    "balanced_class_weights", "resolve_class_weight",
]
