"""BitFit (Ben-Zaken et al., 2021): train bias vectors and norm weights only."""

from peftops.methods.bitfit.config import BitFitConfig
from peftops.methods.bitfit.method import BitFitMethod

__all__ = ["BitFitConfig", "BitFitMethod"]
