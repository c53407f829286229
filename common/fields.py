from decimal import Decimal

from django.core import validators
from django.db import models

from .eth import UINT256_MAX


class Uint256Field(models.DecimalField):
    """An unsigned 256-bit integer stored as NUMERIC(78,0) and handled in Python as int."""

    def __init__(self, *args, **kwargs):
        kwargs["max_digits"] = 78
        kwargs["decimal_places"] = 0
        super().__init__(*args, **kwargs)
        self.validators.extend([validators.MinValueValidator(0), validators.MaxValueValidator(UINT256_MAX)])

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("max_digits", None)
        kwargs.pop("decimal_places", None)
        return name, path, args, kwargs

    def from_db_value(self, value, expression, connection):
        return None if value is None else int(value)

    def to_python(self, value):
        if value is None or isinstance(value, int):
            return value
        value = super().to_python(value)
        return int(value)

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None:
            return None
        return Decimal(int(value))
