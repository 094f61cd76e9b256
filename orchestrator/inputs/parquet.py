"""Parquet tables as input (local or ``s3://``), read one row group at a time with pyarrow.

The image column is the one named with ``image_column``, else found by type and name:

* a struct with a ``bytes`` field (the Hugging Face ``datasets`` Image feature,
  ``{bytes, path}``) or a binary column: the image bytes themselves;
* a string column named ``url``/``URL``/``image_url``/``image``/``path``/``file_name``…:
  ``http(s)://`` and ``s3://`` URLs are fetched like URL inputs (the same allow-list and
  limits), other strings are paths relative to the Parquet file.

Columns in ``keep_columns`` that the table has (default: ``caption``, ``text``, ``TEXT``,
``alt``, ``key``, ``id``) become the item's metadata, with ``shard`` (the file) and ``row``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from orchestrator.inputs.files import from_ref
from orchestrator.inputs.item import InputItem, cap_meta, sniff_ext

DEFAULT_KEEP = ("caption", "text", "TEXT", "alt", "key", "id")
_STRING_NAMES = ("url", "image_url", "img_url", "image", "img", "path", "image_path",
                 "file_name", "filename", "filepath", "file")
_BATCH_ROWS = {"bytes": 64, "ref": 4096}  # rows decoded at a time: bytes columns are heavy


def is_table_name(name: str) -> bool:
    return name.lower().endswith((".parquet", ".pq"))


def _kind(t) -> str | None:
    """'struct' / 'binary' / 'string' for a usable image column type, else None."""
    import pyarrow as pa

    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        if "bytes" in names and pa.types.is_binary(t.field("bytes").type) or \
                "bytes" in names and pa.types.is_large_binary(t.field("bytes").type):
            return "struct"
        return None
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return None


def find_image_column(schema, named: str | None) -> tuple[str, str]:
    """(column, kind) or raise ValueError with the message for the error record."""
    cols = {f.name: f.type for f in schema}
    if named:
        if named not in cols:
            raise ValueError(f"missing_column: no column {named!r} (columns: "
                             f"{', '.join(cols)})")
        kind = _kind(cols[named])
        if kind is None:
            raise ValueError(f"bad_column: column {named!r} is {cols[named]}, not image bytes, "
                             f"a {{bytes, path}} struct, or URL/path strings")
        return named, kind
    for want in ("struct", "binary"):
        for n, t in cols.items():
            if _kind(t) == want:
                return n, want
    lower = {n.lower(): n for n in cols}
    for cand in _STRING_NAMES:
        n = lower.get(cand)
        if n is not None and _kind(cols[n]) == "string":
            return n, "string"
    raise ValueError(f"no_image_column: no column of image bytes, {{bytes, path}} structs or "
                     f"URL/path strings among {', '.join(cols)}; name one with --image-column")


def _open(ref: str):
    if ref.startswith("s3://"):
        import io

        from orchestrator.inputs.s3 import RangeReader

        return io.BufferedReader(RangeReader(ref), buffer_size=1 << 20)
    return Path(ref).expanduser().open("rb")


def iter_table(ref: str, *, image_column: str | None = None,
               keep_columns: list[str] | tuple[str, ...] | None = None) -> Iterator[InputItem]:
    import pyarrow.parquet as pq

    from workers.settings import get_settings

    max_bytes = get_settings().max_image_bytes
    is_s3 = ref.startswith("s3://")
    ident_base = ref if is_s3 else str(Path(ref).expanduser().resolve())
    base = ref.rsplit("/", 1)[0] if is_s3 else Path(ref).expanduser().resolve().parent
    try:
        f = _open(ref)
    except Exception as e:  # OSError, StoreError
        yield InputItem(source=ref, error=f"unreadable: cannot open table {ref!r}: {e}")
        return
    with f:
        try:
            pf = pq.ParquetFile(f)
            col, kind = find_image_column(pf.schema_arrow, image_column)
        except ValueError as e:
            msg = str(e)
            if ": " not in msg or msg.split(":", 1)[0] not in ("missing_column", "bad_column",
                                                                 "no_image_column"):
                msg = f"bad_table: {ref} is not a readable Parquet file: {e}"
            yield InputItem(source=ref, error=f"{msg.split(': ', 1)[0]}: {ref}: "
                            f"{msg.split(': ', 1)[1]}")
            return
        except Exception as e:  # ArrowInvalid (a ValueError), OSError, StoreError
            yield InputItem(source=ref, error=f"bad_table: {ref} is not a readable Parquet "
                            f"file: {e}")
            return
        names = set(pf.schema_arrow.names)
        keep = [c for c in (DEFAULT_KEEP if keep_columns is None else keep_columns)
                if c in names and (c != col or kind == "string")]
        row = 0
        try:
            for rb in pf.iter_batches(batch_size=_BATCH_ROWS["ref" if kind == "string"
                                                             else "bytes"],
                                      columns=[col, *keep]):
                images = rb.column(col)
                kept = {c: rb.column(c).to_pylist() for c in keep}
                for i in range(rb.num_rows):
                    meta = cap_meta({**{c: kept[c][i] for c in keep}, "shard": ref, "row": row})
                    yield _row_item(ref, row, images[i], kind, base, meta,
                                    f"{ident_base}#{row}", max_bytes)
                    row += 1
        except Exception as e:  # a row group that cannot be decoded, S3 failing midway
            yield InputItem(source=ref, error=f"bad_table: {ref} breaks at row {row} (the rows "
                            f"before are kept): {type(e).__name__}: {e}")


def _row_item(ref, row, cell, kind, base, meta, ident, max_bytes) -> InputItem:
    source = f"{ref}#{row}"
    if kind == "string":
        v = cell.as_py()
        if not v:
            return InputItem(source=source, error=f"empty_cell: row {row} has no image "
                             f"reference", meta=meta, ident=ident)
        it = from_ref(v, base, meta=meta, ident=ident,
                      manifest_dir=base if isinstance(base, Path) else None)
        it.source = source
        return it
    if kind == "struct":
        d = cell.as_py() or {}
        data, name = d.get("bytes"), d.get("path")
    else:
        data, name = cell.as_py(), None
    if data is None:
        hint = f" (path {name!r})" if name else ""
        return InputItem(source=source, error=f"null_image: row {row} has no image bytes{hint}",
                         meta=meta, ident=ident)
    if len(data) > max_bytes:
        return InputItem(source=source, error=f"file_too_large: row {row} is {len(data)} bytes, "
                         f"over the limit of {max_bytes}", meta=meta, ident=ident)
    return InputItem(source=source, data=data, ext=sniff_ext(data, name), meta=meta, ident=ident)
