"""numpyro_jko: importance-corrected neural JKO sampling for NumPyro."""

from numpyro_jko._version import __version__

__all__ = ["__version__"]
