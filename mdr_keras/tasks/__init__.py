"""Task layers of mdr: they turn tower outputs into losses."""
