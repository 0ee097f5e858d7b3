"""Pure readers, one module per source: files in, a :class:`Panel` (or the source's own record of arrays) out.

No windows, splits, normalisation or Lightning here: those are :mod:`tsdiffusion.data.windows` and the
DataModules. Downloads, checksums and the download cache are :mod:`tsdiffusion.data.download`.
"""

from tsdiffusion.data.sources.panel import Panel, panel_time_features

__all__ = ["Panel", "panel_time_features"]
