"""Pure training code: torch + numpy + pyarrow, no database and no HTTP."""
