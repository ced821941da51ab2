"""Add-on regularisers (PPC, HFPL, RCA) as plug-ins: see :mod:`tagseg.addons.registry`."""
