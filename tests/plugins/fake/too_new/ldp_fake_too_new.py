"""A plugin written for a plugin API newer than this daemon's."""

from lightningd_py import api

api.require("1.99")

__all__: list[str] = []
