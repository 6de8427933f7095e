"""One ``get_config`` for tfp_nice's Keras layers: their constructor arguments, by name."""

from __future__ import annotations

__all__ = ["ConfigFields"]


class ConfigFields:
    """A mixin (first among the bases): ``get_config`` is the base class's config plus the
    attributes named in ``config_fields`` (tuples as lists), which ``from_config`` passes
    back to the constructor as keyword arguments of the same names."""

    #: The constructor arguments saved in the config, each held in an attribute of its name.
    config_fields: tuple[str, ...] = ()

    def get_config(self) -> dict:
        config = super().get_config()
        for field in self.config_fields:
            value = getattr(self, field)
            config[field] = list(value) if isinstance(value, tuple) else value
        return config
