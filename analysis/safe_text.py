"""Text from result trees, made safe for every output: nothing read from a file or a directory
name becomes a spreadsheet formula, breaks an XML (xlsx) file, or fails to encode as UTF-8.

- Names that are not UTF-8 reach Python as lone surrogates (os.fsdecode's surrogateescape), and
  JSON may carry them too: shown as `\\udcff`.
- Control characters that XML 1.0 forbids (all of C0 but tab, LF, CR): shown as `\\x07`.
- CSV: a cell starting with = + - @ (or tab / CR) is prefixed with ' (OWASP's CSV injection
  advice); xlsx: such a cell is stored as a string, never as a formula.
"""

from __future__ import annotations

import math
import re
from typing import Any

_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def text(value: str) -> str:
    """`value` with lone surrogates and XML-illegal characters written as escapes."""
    if value.isascii() and not _XML_ILLEGAL.search(value):
        return value
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if not isinstance(value, str):
        return value
    value = text(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def harden_workbook(wb: Any) -> None:
    """Every string cell of an openpyxl workbook: escaped, and stored as text (openpyxl types a
    string that starts with '=' as a formula)."""
    for ws in wb.worksheets:
        for cell in ws._cells.values():  # every written cell, without creating empty ones
            value = cell.value
            if isinstance(value, str):
                clean = text(value)
                if clean is not value:
                    cell.value = clean
                if cell.data_type == "f" or clean.startswith("="):
                    cell.data_type = "s"
