"""Saving and restoring optimizer states."""

from gradchain.checkpoint.state_io import (
    restore_state,
    save_state,
)

__all__ = [
    "restore_state",
    "save_state",
]
