"""lightningd-py: a plugin daemon beside LND."""

from .hookspecs import hookimpl

__all__ = ["API_VERSION", "__version__", "hookimpl"]

__version__ = "0.1.0"
# The version of the plugin API (lightningd_py.api); plugins may require a minimum.
API_VERSION = (1, 0)
