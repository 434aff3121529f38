"""Load task records through ``datasets``: a hub id, or a local .jsonl / .json / .jsonl.gz / .parquet file.

Every record is checked for the fields the task needs; a missing field fails with a message that names the
file, the row and the field.
"""

from __future__ import annotations

from pathlib import Path

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".gz": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """A data file or hub dataset cannot be used; the message names the source, the row and the field."""


def load_records(source: str, split: str = "train", required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of ``source`` (a local file or a hub dataset id; ``name:config`` picks a hub config) as dicts."""
    import datasets

    path = Path(source)
    if path.suffix in LOCAL_FORMATS or path.exists():
        if not path.is_file():
            raise DataError(
                f"data file {source!r} not found (give a .jsonl, .json, .jsonl.gz or .parquet file, or a hub id)"
            )
        builder = LOCAL_FORMATS.get(path.suffix)
        if builder is None:
            raise DataError(
                f"data file {source!r}: unknown format {path.suffix!r}; use one of {', '.join(LOCAL_FORMATS)}"
            )
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except (
            Exception
        ) as e:  # datasets raises many types for unreadable files; report which file, keep the cause
            raise DataError(f"data file {source!r} could not be read: {type(e).__name__}: {e}") from e
    else:
        name, _, config = source.partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split=split)
        except Exception as e:
            raise DataError(
                f"dataset {source!r} (split {split!r}) could not be loaded: {type(e).__name__}: {e}"
            ) from e
    rows = ds.to_list()
    for i, row in enumerate(rows):
        for key in required:
            if row.get(key) is None:
                raise DataError(
                    f"{source}: row {i + 1} has no field {key!r} (present: {', '.join(sorted(k for k, v in row.items() if v is not None))}); "
                    f"this task needs {', '.join(required)}"
                )
    return rows
