"""Text from result trees, made safe for every output: nothing read from a file or a directory
name becomes a spreadsheet formula, breaks an XML (xlsx) file, or fails to encode as UTF-8.

- Names that are not UTF-8 reach Python as lone surrogates (os.fsdecode's surrogateescape), and
  JSON may carry them too: shown as `\\udcff`.
- Control characters that XML 1.0 forbids (all of C0 but tab, LF, CR): shown as `\\x07`.
- CSV: a cell starting with = + - @ (or tab / CR) is prefixed with ' (OWASP's CSV injection
  advice), and line breaks inside a text cell are written as escapes: a spreadsheet program
  starts a new row at a lone CR, where the rest of the cell would start a row of its own
  (`x\\r=1+1`); xlsx: such a cell is stored as a string, never as a formula.
- Terminal: `terminal()` escapes everything a terminal would act on (ESC and CSI sequences, OSC 8
  links, CR overwriting the line, C1 controls, bidi overrides reordering what follows) as
  `\\x1b`, `\\u202e`: names, reasons and paths read from a spec, a ledger, a status file, a
  result tree or a directory name, as status, logs, the dry run, collect and every error
  message print them.
"""

from __future__ import annotations

import math
import re
from typing import Any

# C0, DEL, C1, bidi embeddings / overrides / isolates and marks, line separators, lone
# surrogates (names that are not UTF-8)
_TERMINAL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                       "\u2028\u2029\ud800-\udfff]")


def escape_char(m: re.Match[str]) -> str:
    """One matched character as its escape (\\x1b, \\u202e)."""
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(value: Any) -> str:
    """`value` as text with every character a terminal acts on written as an escape."""
    text = str(value)
    if text.isascii() and text.isprintable():
        return text
    return _TERMINAL.sub(escape_char, text)


_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# what a spreadsheet program, or Python's splitlines, may take for the end of a row
_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
def text(value: str) -> str:
    """`value` with lone surrogates and XML-illegal characters written as escapes."""
    if value.isascii() and not _XML_ILLEGAL.search(value):
        return value
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def csv_cell(value: Any) -> Any:
    """A value as a CSV field no spreadsheet program runs or splits: numbers as numbers,
    non-finite floats and every string as text that neither holds a line break nor starts with
    a formula character."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        value = str(value)
    elif isinstance(value, float) and not math.isfinite(value):
        value = str(value)  # "-inf" is no number to a spreadsheet: guarded below
    elif not isinstance(value, str):
        return value
    value = _LINE_BREAK.sub(escape_char, text(str(value)))
    return "'" + value if value.lstrip(" ").startswith(_FORMULA_START) else value


def harden_workbook(wb: Any) -> None:
    """Every string cell of an openpyxl workbook: escaped, and stored as text (openpyxl types a
    string that starts with '=' as a formula)."""
    for ws in wb.worksheets:
        for cell in ws._cells.values():  # every written cell, without creating empty ones
            value = cell.value
            if isinstance(value, float) and not math.isfinite(value):
                cell.value = str(value)  # no number in xlsx: Excel refuses the file at "inf"
                continue
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
                cell.value = str(value)  # beyond a double's integers: kept whole, as text
                continue
            if isinstance(value, str):
                clean = text(value)
                if clean is not value:
                    cell.value = clean
                if cell.data_type == "f" or clean.startswith("="):
                    cell.data_type = "s"
