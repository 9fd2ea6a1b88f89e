"""jobs.safeyaml: a spec's YAML, loaded bounded in size and time (aliases counted expanded,
recursion refused), strict where YAML 1.1 is lax (duplicate keys, base-60 and other-base
numbers), UTF-8 only; `check_values` on what was loaded; `read_bounded` for regular files of a
bounded size only."""

from __future__ import annotations

import errno
import os

import pytest
import yaml

from jobs import safeyaml
from jobs.safeyaml import (
    MAX_BYTES,
    Radix,
    Sexagesimal,
    Unreadable,
    YamlRefused,
    check_values,
    control_char,
    decode,
    load,
    read_bounded,
)


def refusal(data: bytes) -> YamlRefused:
    with pytest.raises(YamlRefused) as info:
        load(data)
    return info.value


# --- what is read as what ---------------------------------------------------------------------

def test_plain_values():
    assert load(b"a: 1\nb: 1.5\nc: -3\nd: 1_000\ne: yes\nf: null\ng: text\nh: 0\ni: +7\n") == {
        "a": 1, "b": 1.5, "c": -3, "d": 1000, "e": True, "f": None, "g": "text", "h": 0,
        "i": 7}


def test_floats_as_yaml_1_1_writes_them():
    got = load(b"a: .5\nb: 1.0e+3\nc: 2.\nd: .inf\ne: -.inf\nf: 1e3\n")
    assert got == {"a": 0.5, "b": 1000.0, "c": 2.0, "d": float("inf"), "e": float("-inf"),
                   "f": "1e3"}  # no dot: YAML 1.1 has no such float


def test_base_60_and_other_bases_are_kept_as_text_and_marked():
    got = load(b"a: 4:00:00\nb: 010\nc: 0x10\nd: 0b11\ne: 08\nf: '4:00:00'\ng: '010'\n")
    assert got == {"a": "4:00:00", "b": "010", "c": "0x10", "d": "0b11", "e": "08",
                   "f": "4:00:00", "g": "010"}
    assert isinstance(got["a"], Sexagesimal)
    assert all(isinstance(got[k], Radix) for k in "bcde")
    assert type(got["f"]) is str and type(got["g"]) is str  # quoted: plain text


@pytest.mark.parametrize("data", [b"", b"# a comment only\n", b"---\n"])
def test_an_empty_document_is_none(data):
    assert load(data) is None


def test_one_explicit_document_is_fine():
    assert load(b"---\na: 1\n...\n") == {"a": 1}


def test_several_documents_are_refused():
    assert refusal(b"name: a\n---\nname: b\n").message == (
        "the file holds several YAML documents; a spec is one")


# --- duplicate keys ---------------------------------------------------------------------------

def test_a_duplicate_key_is_refused_with_both_lines():
    err = refusal(b"a: 1\nb: 2\na: 3\n")
    assert (err.where, err.message) == (
        "line 3", "duplicate key 'a' (first on line 1); YAML would keep only the last one")


def test_a_duplicate_key_in_a_nested_flow_mapping():
    err = refusal(b"grid: {task: [mrpc], task: [rte]}\n")
    assert err.where == "line 1" and "duplicate key 'task'" in err.message


@pytest.mark.parametrize("data, key", [(b"1: a\n+1: c\n", "1"), (b"true: a\nyes: b\n", "True"),
                                       (b"a: 1\n\"a\": 2\n", "'a'")])
def test_keys_equal_as_values_are_duplicates(data, key):
    err = refusal(data)
    assert (err.where, err.message) == (
        "line 2", f"duplicate key {key} (first on line 1); YAML would keep only the last one")


def test_merge_keys_are_no_duplicates():
    assert load(b"base: &b {a: 1, c: 3}\nx:\n  <<: *b\n  a: 2\n") == {
        "base": {"a": 1, "c": 3}, "x": {"a": 2, "c": 3}}


# --- aliases ----------------------------------------------------------------------------------

def test_aliases_are_expanded():
    assert load(b"a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}


def test_the_expanded_size_is_bounded(monkeypatch):
    # root 1, key a 1, [1, 2, 3] 4, key b 1, [*x, *x] 1 + 4 + 4: 16 nodes once expanded
    data = b"a: &x [1, 2, 3]\nb: [*x, *x]\n"
    monkeypatch.setattr(safeyaml, "MAX_NODES", 16)
    assert load(data) == {"a": [1, 2, 3], "b": [[1, 2, 3], [1, 2, 3]]}
    monkeypatch.setattr(safeyaml, "MAX_NODES", 15)
    assert refusal(data).message == ("more than 15 values once its aliases are expanded (an "
                                     "alias bomb?)")


def test_a_billion_laughs_is_refused_before_it_is_built():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    err = refusal("\n".join(lines).encode())
    assert err.message == (f"more than {safeyaml.MAX_NODES} values once its aliases are "
                           "expanded (an alias bomb?)")


def test_a_recursive_alias_is_refused():
    err = refusal(b"a: 1\nb: &r [x, *r]\n")
    assert (err.where, err.message) == ("line 2", "a recursive alias (an anchor used inside "
                                                  "itself)")


# --- tags, syntax, depth, conversion ----------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"a: !!python/object/apply:os.system ['echo hi']\n", b"a: !!python/name:os.system\n",
    b"a: !custom x\n", b"a: !!binary notbase64!\n",
])
def test_tags_that_construct_objects_are_refused(data):
    with pytest.raises(yaml.YAMLError):
        load(data)


def test_an_unhashable_key_is_a_yaml_error():
    with pytest.raises(yaml.constructor.ConstructorError):
        load(b"? [1, 2]\n: x\n")


def test_syntax_errors_are_yaml_errors():
    with pytest.raises(yaml.YAMLError):
        load(b"a: [1, 2\n")


def test_deep_nesting_is_refused():
    assert refusal(b"a: " + b"[" * 3000 + b"]" * 3000).message == "nested too deeply"


def test_a_number_too_long_to_convert():
    assert refusal(b"a: " + b"9" * 5000 + b"\n").message.startswith(
        "a value YAML cannot convert: ")


# --- text -------------------------------------------------------------------------------------

def test_decode_utf8_with_or_without_bom():
    assert decode(b"a: \xc3\xa9\n") == "a: \u00e9\n"
    assert decode(b"\xef\xbb\xbfa: 1\n") == "a: 1\n"
    assert load(b"\xef\xbb\xbfa: 1\n") == {"a": 1}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-be"])
def test_utf16_and_utf32_with_bom_are_refused(encoding):
    data = "a: 1\n".encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    with pytest.raises(YamlRefused) as info:
        decode(data)
    assert (info.value.where, info.value.message) == (
        "", "the spec is UTF-16 or UTF-32 text: save it as UTF-8")


def test_undecodable_bytes_give_line_and_offset():
    with pytest.raises(YamlRefused) as info:
        decode(b"a: 1\nb: 2\nc: \xe9\n")
    assert (info.value.where, info.value.message) == (
        "line 3", "not UTF-8 text (byte 0xe9 at offset 13): save the spec as UTF-8")


def test_text_over_max_bytes_is_refused():
    decode(b"#" * MAX_BYTES)  # the limit itself is fine
    with pytest.raises(YamlRefused, match=f"{MAX_BYTES + 1} bytes: a spec is at most "
                                          f"{MAX_BYTES} bytes"):
        decode(b"#" * (MAX_BYTES + 1))


# --- check_values -----------------------------------------------------------------------------

@pytest.mark.parametrize("data, want", [
    ({"a": [1, "x", {"b": 2.5}], "c": True, "d": None}, None),
    ({"a": [1, "x\ny"]}, ("a[1]", "'x\\ny': control character '\\n' at position 1; values "
                                  "must be one line of printable text")),
    ({"a": {"b": float("nan")}}, ("a.b", "nan is not a finite number")),
    ({"a": float("-inf")}, ("a", "-inf is not a finite number")),
    ({1: "x"}, ("(top)", "key 1 is not a string")),
    ({"a": {"k\u2028": 1}}, ("a", "key 'k\\u2028' holds a control character")),
    ({"a": 2**63}, ("a", "9223372036854775808... (19 digits) is out of range")),
    ({"a": 2**63 - 1}, None),
    ({"a": "\udcff"}, ("a", "'\\udcff': holds a lone surrogate, which has no UTF-8 form; write "
                            "the character itself (at position 0)")),
    ({"a": "tab\there"}, ("a", "'tab\\there': control character '\\t' at position 3; values "
                               "must be one line of printable text")),
    ({"a": "\x85"}, ("a", "'\\x85': control character '\\x85' at position 0; values must be "
                          "one line of printable text")),
])
def test_check_values(data, want):
    assert check_values(data) == want


def test_check_values_reports_the_first_problem_in_order():
    assert check_values({"a": [1, "ok"], "b": ["x\ny"], "c": float("nan")})[0] == "b[0]"
    assert check_values({"x": 1}, "base") is None
    assert check_values({"x": "a\nb"}, "base")[0] == "base.x"


@pytest.mark.parametrize("text, where, message", [
    (b"t: 4:00:00\n", "t", 'unquoted 4:00:00 is a base-60 number in YAML 1.1 (14400); quote '
                           'it: "4:00:00"'),
    (b"t: [1, {u: 1:30.5}]\n", "t[1].u", 'unquoted 1:30.5 is a base-60 number in YAML 1.1 '
                                         '(90.5); quote it: "1:30.5"'),
    (b"t: 010\n", "t", 'unquoted 010 is an octal number in YAML 1.1 (8) and 10 in YAML 1.2; '
                       'write it without the leading zero (10), or quote it: "010"'),
    (b"t: 08\n", "t", 'unquoted 08 is a string in YAML 1.1 and 8 in YAML 1.2; write it '
                      'without the leading zero (8), or quote it: "08"'),
    (b"t: 0x1F\n", "t", 'unquoted 0x1F is a hexadecimal number in YAML 1.1 (31); write 31, '
                        'or quote it: "0x1F"'),
    (b"t: -0b101\n", "t", 'unquoted -0b101 is a binary number in YAML 1.1 (-5); write -5, or '
                          'quote it: "-0b101"'),
    (b"4:00: x\n", "(top)", 'key 4:00: unquoted 4:00 is a base-60 number in YAML 1.1 (240); '
                            'quote it: "4:00"'),
])
def test_unquoted_numbers_yaml_readers_disagree_on(text, where, message):
    assert check_values(load(text)) == (where, message)


def test_control_char():
    assert control_char("plain text, é and ü") is None
    assert control_char("a\tb") == "\t"
    assert control_char("a\u2028b") == "\u2028"
    assert control_char("\x7f") == "\x7f"
    assert control_char("x\udc80") == "\udc80"  # an undecodable byte of a file name


# --- read_bounded -----------------------------------------------------------------------------

def test_read_bounded_reads_a_regular_file(tmp_path):
    (tmp_path / "s.yaml").write_bytes(b"name: a\n")
    assert read_bounded(tmp_path / "s.yaml", 8, "spec") == b"name: a\n"


def test_read_bounded_refuses_an_oversized_file(tmp_path):
    (tmp_path / "s.yaml").write_bytes(b"x" * 9)
    with pytest.raises(Unreadable) as info:
        read_bounded(tmp_path / "s.yaml", 8, "spec")
    assert str(info.value).endswith(": a spec is read from a regular file of at most 8 bytes")
    assert str(info.value).startswith("9 bytes, more than the 8")


def test_read_bounded_refuses_a_fifo_at_once(tmp_path):
    os.mkfifo(tmp_path / "s.yaml")
    with pytest.raises(Unreadable) as info:
        read_bounded(tmp_path / "s.yaml", 100, "ledger")
    assert str(info.value) == ("a FIFO, not a regular file: a ledger is read from a regular "
                               "file of at most 100 bytes")


def test_read_bounded_refuses_a_directory(tmp_path):
    with pytest.raises(Unreadable, match="^a directory, not a regular file: a file is read"):
        read_bounded(tmp_path, 100)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_read_bounded_refuses_a_device():
    with pytest.raises(Unreadable, match="^a character device, not a regular file"):
        read_bounded("/dev/zero", 100, "spec")


def test_read_bounded_of_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError) as info:
        read_bounded(tmp_path / "nope.yaml", 100)
    assert info.value.errno == errno.ENOENT and not isinstance(info.value, Unreadable)
