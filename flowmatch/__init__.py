"""flowmatch: flow matching in JAX.

Time convention everywhere: t = 0 is noise (x0), t = 1 is data (x1).
"""

__version__ = "0.1.0"
