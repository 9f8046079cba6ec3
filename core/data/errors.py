"""What every reader of the data layer shares: the error a user can fix, and the size limit."""
from __future__ import annotations

MAX_SIDE = 4096  # larger images are refused: a typical ultrasound frame is < 1100 px


class DataError(ValueError):
    """Bad input data. The message names the file and what is wrong with it."""
