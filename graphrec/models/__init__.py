"""Neural modules: MFQ (MMBee), statistic and product forecasters (LiveForesighter)."""
from .mfq import MFQ, orthogonal_projection
from .product_forecaster import ProductForecaster
from .stat_forecaster import RevIN, StatForecaster

__all__ = ["MFQ", "orthogonal_projection", "ProductForecaster", "RevIN", "StatForecaster"]
