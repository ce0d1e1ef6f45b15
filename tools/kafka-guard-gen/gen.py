#!/usr/bin/env python3
"""Generates the request layouts of weir's Kafka request guard from the kafka-protocol crate.

The guard (crates/weir-kafka/src/guard.rs) walks a request's wire layout before the crate's
decoder runs, so its layouts must be exactly what that decoder reads. The crate's generated
decoders (`impl Decodable for X` in src/messages/<api>_request.rs and request_header.rs) are
the most precise statement of that, so this script reads them and writes
crates/weir-kafka/src/guard/layouts.rs.

    python3 tools/kafka-guard-gen/gen.py            # writes layouts.rs
    python3 tools/kafka-guard-gen/gen.py --check    # exits 1 if layouts.rs is not current

The crate is the `kafka-protocol` package weir-kafka depends on, found with `cargo metadata`
(or given with --crate-dir). The parser knows the statement shapes the crate's code generator
writes and nothing else: a statement it does not recognise stops it with the file and line,
because a guessed layout would let the guard and the decoder disagree about where a count is.

Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The request APIs guarded, by their `ApiKey` variant names; each is generated over every
# version the crate decodes. The source file is the name in snake case + `_request.rs`, the
# request type the name + `Request`.
APIS = [
    "Produce",
    "Fetch",
    "ListOffsets",
    "Metadata",
    "OffsetCommit",
    "OffsetFetch",
    "FindCoordinator",
    "JoinGroup",
    "Heartbeat",
    "LeaveGroup",
    "SyncGroup",
    "DescribeGroups",
    "ListGroups",
    "SaslHandshake",
    "ApiVersions",
    "CreateTopics",
    "DeleteTopics",
    "DeleteRecords",
    "InitProducerId",
    "OffsetForLeaderEpoch",
    "AddPartitionsToTxn",
    "AddOffsetsToTxn",
    "EndTxn",
    "TxnOffsetCommit",
    "CreateAcls",
    "DeleteAcls",
    "DescribeAcls",
    "DescribeConfigs",
    "AlterConfigs",
    "DescribeLogDirs",
    "SaslAuthenticate",
    "CreatePartitions",
    "DeleteGroups",
    "IncrementalAlterConfigs",
    "OffsetDelete",
    "DescribeCluster",
    "DescribeProducers",
    "DescribeTransactions",
    "ListTransactions",
    "ConsumerGroupHeartbeat",
    "ConsumerGroupDescribe",
    "DescribeTopicPartitions",
]

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "weir-kafka" / "src" / "guard" / "layouts.rs"
OUT_NAME = "crates/weir-kafka/src/guard/layouts.rs"
SCRIPT_NAME = "tools/kafka-guard-gen/gen.py"

# Versions are evaluated as sets over this range; a struct's own range must lie inside it.
UNIVERSE = frozenset(range(-1, 1000))

# Wire sizes of the crate's fixed-size types.
FIXED = {
    "Int8": 1,
    "Int16": 2,
    "UInt16": 2,
    "Int32": 4,
    "UInt32": 4,
    "Int64": 8,
    "Float64": 8,
    "Boolean": 1,
    "Uuid": 16,
}
STRINGS = {"String": "Classic", "CompactString": "Compact"}
BYTES = {"Bytes": "Classic", "CompactBytes": "Compact"}
ARRAYS = {"Array": "Classic", "CompactArray": "Compact"}

VERSION_CHECK_BAIL = 'bail!("specified version not supported by this message type");'
TAG_BAIL = 'bail!("Tag {} is not valid for version {}", tag, version);'
UNKNOWN_TAG = [
    "let unknown_value = buf.try_get_bytes(size as usize)?;",
    "unknown_tagged_fields.insert(tag as i32, unknown_value);",
]
TAGGED_HEAD = [
    "let num_tagged_fields = types::UnsignedVarInt.decode(buf)?;",
    "for _ in 0..num_tagged_fields {",
    "let tag: u32 = types::UnsignedVarInt.decode(buf)?;",
    "let size: u32 = types::UnsignedVarInt.decode(buf)?;",
]


class GenError(Exception):
    pass


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def intervals(versions) -> list[tuple[int, int]]:
    """The maximal runs of consecutive versions in `versions`, in order."""
    runs: list[tuple[int, int]] = []
    for v in sorted(versions):
        if runs and runs[-1][1] == v - 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


# ---------------------------------------------------------------------------------------------
# What the parser produces.


@dataclass
class Ty:
    """How one field is read: kind is fixed, str, bytes, array, struct or option_struct."""

    kind: str
    size: int = 0  # fixed
    enc: str = ""  # str, bytes, array: Classic or Compact
    elem: Ty | None = None  # array: fixed, str or struct
    struct: str = ""  # struct, option_struct, or an array's struct element


@dataclass
class Read:
    """A field read from the wire in `versions`."""

    name: str
    versions: frozenset
    ty: Ty
    nullable: bool
    line: int


@dataclass
class Tag:
    """A known tagged field: read as `ty` in `versions`, refused by the decoder elsewhere."""

    tag: int
    read: Read


@dataclass
class Layout:
    """One struct's decoder: its version range, its fields in order, its tagged fields."""

    name: str
    versions: frozenset
    reads: list[Read] = field(default_factory=list)
    tagged: frozenset = frozenset()
    tags: list[Tag] = field(default_factory=list)
    refused: list[tuple[str, frozenset]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading one source file.


class Source:
    def __init__(self, path: Path):
        self.path = path
        self.lines = path.read_text().split("\n")
        self.structs: dict[str, dict[str, str]] = {}
        self.decoders: dict[str, list[tuple[int, str]]] = {}
        self._scan()

    def error(self, line: int, msg: str) -> GenError:
        return GenError(f"{self.path}:{line}: {msg}")

    def _scan(self):
        i = 0
        n = len(self.lines)
        while i < n:
            text = self.lines[i]
            if m := re.fullmatch(r"pub struct (\w+) \{", text):
                i = self._struct(m.group(1), i + 1)
                continue
            if m := re.fullmatch(r"impl Decodable for (\w+) \{", text):
                i = self._decoder(m.group(1), i + 1)
                continue
            i += 1

    def _struct(self, name: str, i: int) -> int:
        fields: dict[str, str] = {}
        while True:
            if i >= len(self.lines):
                raise self.error(i, f"struct {name} does not end")
            text = self.lines[i]
            i += 1
            if text == "}":
                break
            stripped = text.strip()
            if not stripped or stripped.startswith("///") or stripped.startswith("#["):
                continue
            m = re.fullmatch(r"    pub (\w+): (.+),", text)
            if not m:
                raise self.error(i, f"cannot read this line of struct {name}: {text.strip()!r}")
            fields[m.group(1)] = m.group(2)
        self.structs[name] = fields
        return i

    def _decoder(self, name: str, i: int) -> int:
        sig = "    fn decode<B: ByteBuf>(buf: &mut B, version: i16) -> Result<Self> {"
        if self.lines[i] != sig:
            raise self.error(i + 1, f"unexpected decode signature for {name}: {self.lines[i]!r}")
        i += 1
        body: list[tuple[int, str]] = []
        while True:
            if i >= len(self.lines):
                raise self.error(i, f"decoder of {name} does not end")
            text = self.lines[i]
            i += 1
            if text == "    }":
                break
            stripped = text.strip()
            if not stripped or stripped.startswith("//"):
                continue
            body.append((i, stripped))
        if self.lines[i] != "}":
            raise self.error(i + 1, f"decoder impl of {name} holds more than `fn decode`")
        self.decoders[name] = body
        return i + 1


def cond_set(src: Source, line: int, text: str) -> frozenset:
    """The versions for which `text` (comparisons of `version` joined by && or ||) holds."""
    if "&&" in text and "||" in text:
        raise src.error(line, f"mixed && and || in a version condition: {text!r}")
    joiner = "&&" if "&&" in text else "||"
    sets = []
    for term in text.split(f" {joiner} "):
        m = re.fullmatch(r"version (>=|<=|>|<|==|!=) (-?\d+)", term.strip())
        if not m:
            raise src.error(line, f"cannot read version condition {text!r}")
        op, n = m.group(1), int(m.group(2))
        test = {
            ">=": lambda v: v >= n,
            "<=": lambda v: v <= n,
            ">": lambda v: v > n,
            "<": lambda v: v < n,
            "==": lambda v: v == n,
            "!=": lambda v: v != n,
        }[op]
        sets.append(frozenset(v for v in UNIVERSE if test(v)))
    out = sets[0]
    for s in sets[1:]:
        out = out & s if joiner == "&&" else out | s
    return out


def is_default(text: str) -> bool:
    """A value that reads nothing off the wire (a default for a field absent in a version)."""
    return bool(text) and not re.search(r"\bbuf\b|decode|bail!|\bversion\b|[{}]", text)


class Decoder:
    """The parse of one `fn decode` body of `src`."""

    def __init__(self, src: Source, name: str):
        self.src = src
        self.name = name
        self.body = src.decoders[name]
        self.fields = src.structs.get(name)
        if self.fields is None:
            raise src.error(self.body[0][0], f"no `pub struct {name}` for this decoder")
        self.i = 0
        self.bound: list[str] = []
        self.tag_targets: set[str] = set()
        self.layout: Layout | None = None

    def peek(self) -> tuple[int, str]:
        if self.i >= len(self.body):
            last = self.body[-1][0] if self.body else 0
            raise self.src.error(last, f"decoder of {self.name} ends early")
        return self.body[self.i]

    def next(self) -> tuple[int, str]:
        item = self.peek()
        self.i += 1
        return item

    def expect(self, text: str):
        line, got = self.next()
        if got != text:
            raise self.src.error(line, f"expected {text!r} in {self.name}::decode, found {got!r}")

    def fail(self, line: int, text: str, what: str = "statement") -> GenError:
        return self.src.error(line, f"cannot read this {what} in {self.name}::decode: {text!r}")

    def parse(self) -> Layout:
        line, text = self.next()
        m = re.fullmatch(r"if (.+) \{", text)
        if not m:
            raise self.src.error(line, f"{self.name}::decode does not open with a version check")
        versions = UNIVERSE - cond_set(self.src, line, m.group(1))
        self.expect(VERSION_CHECK_BAIL)
        self.expect("}")
        runs = intervals(versions)
        if len(runs) != 1 or min(versions) == min(UNIVERSE) or max(versions) == max(UNIVERSE):
            raise self.src.error(line, f"{self.name} does not decode one bounded version range")
        self.layout = Layout(self.name, versions)
        while True:
            line, text = self.peek()
            if text.startswith("Ok(Self"):
                self.finish()
                return self.layout
            self.statement()

    def statement(self):
        line, text = self.next()
        m = re.fullmatch(r"let (mut )?(\w+) = (.+)", text)
        if not m:
            raise self.fail(line, text)
        mutable, name, rest = bool(m.group(1)), m.group(2), m.group(3)
        if name == "unknown_tagged_fields":
            if rest != "BTreeMap::new();" or not mutable:
                raise self.fail(line, text)
            self.tagged_section()
            return
        self.bind(line, name)
        if mutable:
            # A field read only as a tagged field: its default until its tag arrives.
            if not (rest.endswith(";") and is_default(rest[:-1])):
                raise self.fail(line, text)
            self.tag_targets.add(name)
            return
        if m := re.fullmatch(r"if (.+) \{", rest):
            self.if_value(name, self.layout.versions, line, m.group(1))
            self.expect("};")
            return
        if not rest.endswith(";"):
            raise self.fail(line, text)
        self.value(name, self.layout.versions, line, rest[:-1])

    def bind(self, line: int, name: str):
        if name not in self.fields:
            raise self.src.error(line, f"{self.name} has no field {name}")
        if name in self.bound:
            raise self.src.error(line, f"{name} is bound twice in {self.name}::decode")
        self.bound.append(name)

    def value(self, name: str, versions: frozenset, line: int, text: str):
        """One value expression: a read, a default, or the decoder refusing those versions."""
        if text.endswith(".decode(buf)?"):
            self.read(name, versions, line, text)
        elif text.startswith("bail!("):
            if versions:
                self.layout.refused.append((name, versions))
        elif is_default(text):
            pass
        else:
            raise self.fail(line, text, "value")

    def read(self, name: str, versions: frozenset, line: int, text: str):
        if not versions:
            return
        ty, nullable = self.classify(name, line, text)
        self.layout.reads.append(Read(name, versions, ty, nullable, line))

    def if_value(self, name: str, versions: frozenset, line: int, cond: str):
        """`if cond { value } else { value }` (or `else if`), up to but not including its
        closing brace."""
        holds = cond_set(self.src, line, cond)
        self.block(name, versions & holds)
        line, text = self.next()
        if text == "} else {":
            self.block(name, versions - holds)
        elif m := re.fullmatch(r"\} else if (.+) \{", text):
            self.if_value(name, versions - holds, line, m.group(1))
        else:
            raise self.fail(line, text)

    def block(self, name: str, versions: frozenset):
        line, text = self.next()
        if m := re.fullmatch(r"if (.+) \{", text):
            self.if_value(name, versions, line, m.group(1))
            self.expect("}")
        elif text.startswith("bail!(") and text.endswith(";"):
            self.value(name, versions, line, text[:-1])
        else:
            self.value(name, versions, line, text)

    def tagged_section(self):
        line, text = self.peek()
        if m := re.fullmatch(r"if (.+) \{", text):
            self.next()
            versions = self.layout.versions & cond_set(self.src, line, m.group(1))
            self.tagged_loop(versions)
            self.expect("}")
        elif text == TAGGED_HEAD[0]:
            self.tagged_loop(self.layout.versions)
        else:
            raise self.fail(line, text)

    def tagged_loop(self, versions: frozenset):
        if self.layout.tagged:
            raise self.fail(*self.peek())
        self.layout.tagged = versions
        for text in TAGGED_HEAD:
            self.expect(text)
        line, text = self.peek()
        if text == "match tag {":
            self.next()
            self.tag_arms(versions)
        else:
            for text in UNKNOWN_TAG:
                self.expect(text)
        self.expect("}")

    def tag_arms(self, versions: frozenset):
        seen = set()
        while True:
            line, text = self.next()
            if text == "_ => {":
                for text in UNKNOWN_TAG:
                    self.expect(text)
                self.expect("}")
                self.expect("}")
                return
            m = re.fullmatch(r"(\d+) => \{", text)
            if not m:
                raise self.fail(line, text, "tag arm")
            tag = int(m.group(1))
            if tag in seen:
                raise self.src.error(line, f"tag {tag} has two arms")
            seen.add(tag)
            self.tag_block(tag, versions)
            self.expect("}")

    def tag_block(self, tag: int, versions: frozenset):
        """One known tag's arm: an assignment, `if cond { .. } else { .. }` of arms, or the
        decoder refusing the tag in those versions. Every version must do one of these: an
        arm that read nothing would leave the field's bytes for the next tag."""
        line, text = self.next()
        if m := re.fullmatch(r"if (.+) \{", text):
            holds = cond_set(self.src, line, m.group(1))
            self.tag_block(tag, versions & holds)
            line, text = self.next()
            if text != "} else {":
                raise self.src.error(line, f"tag {tag}'s arm reads nothing in some versions")
            self.tag_block(tag, versions - holds)
            self.expect("}")
        elif text == TAG_BAIL:
            pass
        elif m := re.fullmatch(r"(\w+) = (.+\.decode\(buf\)\?);", text):
            name = m.group(1)
            if name not in self.tag_targets:
                raise self.src.error(line, f"tag {tag} assigns {name}, not a `let mut` default")
            if versions:
                ty, nullable = self.classify(name, line, m.group(2))
                self.layout.tags.append(Tag(tag, Read(name, versions, ty, nullable, line)))
        else:
            raise self.fail(line, text, "tag arm")

    def finish(self):
        line, text = self.next()
        if m := re.fullmatch(r"Ok\(Self \{ (.+) \}\)", text):
            names = [n.strip() for n in m.group(1).split(",")]
        elif text == "Ok(Self {":
            names = []
            while True:
                line, text = self.next()
                if text == "})":
                    break
                if not re.fullmatch(r"\w+,", text):
                    raise self.fail(line, text)
                names.append(text[:-1])
        else:
            raise self.fail(line, text)
        expected = [n for n in self.fields if n != "unknown_tagged_fields"]
        given = [n for n in names if n != "unknown_tagged_fields"]
        if given != expected or sorted(self.bound) != sorted(expected):
            raise self.src.error(line, f"{self.name}::decode does not bind each field once")
        if self.i != len(self.body):
            raise self.fail(*self.body[self.i])

    def classify(self, name: str, line: int, text: str) -> tuple[Ty, bool]:
        """The guard's form of a decoder expression, and whether the field takes null (the
        crate decodes a null only into an `Option`)."""
        rust = self.fields[name]
        nullable = rust.startswith("Option<")
        inner = rust[len("Option<") : -1] if nullable else rust
        expr = text[: -len(".decode(buf)?")]
        bad = self.src.error(line, f"no guard form for {expr} into {name}: {rust}")
        if m := re.fullmatch(r"types::(\w+)", expr):
            kind = m.group(1)
            if kind in FIXED and not nullable and not inner.startswith("Vec<"):
                return Ty("fixed", size=FIXED[kind]), False
            if kind in STRINGS and not inner.startswith("Vec<"):
                return Ty("str", enc=STRINGS[kind]), nullable
            if kind in BYTES and not inner.startswith("Vec<"):
                return Ty("bytes", enc=BYTES[kind]), nullable
            raise bad
        if expr == "types::Struct { version }":
            if nullable or inner not in self.src.decoders:
                raise bad
            return Ty("struct", struct=inner), False
        if expr == "types::OptionStruct { version }":
            if not nullable or inner not in self.src.decoders:
                raise bad
            return Ty("option_struct", struct=inner), False
        if m := re.fullmatch(r"types::(Array|CompactArray)\((.+)\)", expr):
            vec = re.fullmatch(r"Vec<(.+)>", inner)
            if not vec:
                raise bad
            elem_rust = vec.group(1)
            elem_expr = m.group(2)
            if elem_rust.startswith("Option<") or elem_rust.startswith("Vec<"):
                raise bad
            if elem_expr == "types::Struct { version }":
                if elem_rust not in self.src.decoders:
                    raise bad
                elem = Ty("struct", struct=elem_rust)
            elif (e := re.fullmatch(r"types::(\w+)", elem_expr)) and e.group(1) in FIXED:
                elem = Ty("fixed", size=FIXED[e.group(1)])
            elif e and e.group(1) in STRINGS:
                elem = Ty("str", enc=STRINGS[e.group(1)])
            else:
                raise bad
            return Ty("array", enc=ARRAYS[m.group(1)], elem=elem), nullable
        raise bad


# ---------------------------------------------------------------------------------------------
# From parsed decoders to Rust.


def structs_used(ty: Ty) -> list[str]:
    if ty.kind in ("struct", "option_struct"):
        return [ty.struct]
    if ty.kind == "array" and ty.elem.kind == "struct":
        return [ty.elem.struct]
    return []


class Api:
    """One message (a request body, or the request header) and the structs it reaches."""

    def __init__(self, src: Source, top: str, prefix: str):
        self.src = src
        self.top = top
        self.prefix = prefix
        self.layouts: dict[str, Layout] = {}
        self.order: list[str] = []
        self.visit(top, None, 0)

    def visit(self, name: str, used_in: frozenset | None, line: int):
        if name not in self.layouts:
            if name not in self.src.decoders:
                raise self.src.error(line, f"no decoder for struct {name}")
            self.layouts[name] = Decoder(self.src, name).parse()
            self.order.append(name)
            layout = self.layouts[name]
            for read in layout.reads + [t.read for t in layout.tags]:
                for inner in structs_used(read.ty):
                    self.visit(inner, read.versions, read.line)
        layout = self.layouts[name]
        # The guard walks a nested struct at its parent's version without checking that
        # struct's own range, so every version it is reached in must be in that range.
        if used_in is not None and not used_in <= layout.versions:
            raise self.src.error(
                line, f"{name} is read in versions its decoder refuses: {sorted(used_in)}"
            )

    @property
    def versions(self) -> tuple[int, int]:
        v = self.layouts[self.top].versions
        return min(v), max(v)

    def const(self, name: str) -> str:
        upper = snake(name).upper()
        if upper.startswith(self.prefix):
            return upper
        return f"{self.prefix}_{upper}" if self.prefix else upper


def rust_ty(api: Api, ty: Ty) -> str:
    if ty.kind == "fixed":
        return f"Ty::Fixed({ty.size})"
    if ty.kind == "str":
        return f"Ty::Str({ty.enc})"
    if ty.kind == "bytes":
        return f"Ty::Bytes({ty.enc})"
    if ty.kind == "struct":
        return f"Ty::Struct(&{api.const(ty.struct)})"
    if ty.kind == "option_struct":
        return f"Ty::OptionStruct(&{api.const(ty.struct)})"
    elem = ty.elem
    if elem.kind == "fixed":
        e = f"Elem::Fixed({elem.size})"
    elif elem.kind == "str":
        e = f"Elem::Str({elem.enc})"
    else:
        e = f"Elem::Struct(&{api.const(elem.struct)})"
    return f"Ty::Array({ty.enc}, {e})"


def rust_field(api: Api, read: Read) -> list[str]:
    rows = []
    for lo, hi in intervals(read.versions):
        row = f"f({lo}, {hi}, {rust_ty(api, read.ty)})"
        if read.nullable:
            row += ".nullable()"
        rows.append((row, read.name))
    return rows


def rust_struct(api: Api, name: str) -> list[str]:
    layout = api.layouts[name]
    src = api.src.path.name
    lo, hi = min(layout.versions), max(layout.versions)
    out = [f"/// `{name}` ({src}), v{lo}–{hi}."]
    for field_name, versions in layout.refused:
        runs = ", ".join(f"{a}–{b}" for a, b in intervals(versions))
        out.append(f"/// The decoder refuses versions {runs} at `{field_name}`.")
    out.append(f"const {api.const(name)}: Struct = Struct {{")
    out.append("    fields: &[")
    for read in layout.reads:
        for row, field_name in rust_field(api, read):
            out.append(f"        {row}, // {field_name}")
    out.append("    ],")
    if layout.tagged:
        runs = intervals(layout.tagged)
        if len(runs) != 1:
            raise GenError(f"{src}: {name}'s tagged fields are read in scattered versions")
        out.append(f"    tagged: Some(({runs[0][0]}, {runs[0][1]})),")
    else:
        out.append("    tagged: None,")
    if layout.tags:
        if not layout.tagged:
            raise GenError(f"{src}: {name} has known tags and no tagged fields")
        out.append("    tags: &[")
        for tag in layout.tags:
            for row, field_name in rust_field(api, tag.read):
                out.append(f"        Tagged {{ tag: {tag.tag}, field: {row} }}, // {field_name}")
        out.append("    ],")
    else:
        out.append("    tags: &[],")
    out.append("};")
    return out


def generate(crate_dir: Path, crate_version: str) -> str:
    messages = crate_dir / "src" / "messages"
    header_src = Source(messages / "request_header.rs")
    header = Api(header_src, "RequestHeader", "")
    first = header.layouts["RequestHeader"].reads[:2]
    if (
        [r.name for r in first] != ["request_api_key", "request_api_version"]
        or any(r.ty.kind != "fixed" or r.ty.size != 2 for r in first)
        or any(r.versions != header.layouts["RequestHeader"].versions for r in first)
    ):
        # The guard reads the API key and version at bytes 0–3 before walking the header.
        raise GenError(f"{header_src.path}: the header no longer opens with key and version")

    apis = []
    for api_name in APIS:
        path = messages / f"{snake(api_name)}_request.rs"
        if not path.exists():
            raise GenError(f"{path}: no such file for API {api_name}")
        apis.append((api_name, Api(Source(path), f"{api_name}Request", snake(api_name).upper())))

    consts: dict[str, str] = {}
    for api in [header] + [a for _, a in apis]:
        for name in api.order:
            const = api.const(name)
            if const in consts:
                raise GenError(f"two structs are named {const}: {consts[const]} and {name}")
            consts[const] = name

    out = [
        f"// @generated by {SCRIPT_NAME} from the decoders of kafka-protocol {crate_version}",
        "// (src/messages/*_request.rs and request_header.rs). Do not edit by hand: change",
        "// the generator or its API list and run it again. The guard's tests run it with",
        "// --check, which fails while this file differs from what it would write.",
        "//",
        "// A field is `f(first, last, type)` for the versions it is read in, in the decoder's",
        "// order; an encoding that changes with the version is one row per encoding.",
        "",
        "use kafka_protocol::messages::ApiKey;",
        "",
        "IMPORTS",
        "",
    ]
    lo, hi = header.versions
    out.append("/// The request header.")
    out.append(
        f"pub(super) const HEADER: Message = Message {{ min: {lo}, max: {hi}, "
        f"body: &{header.const(header.top)} }};"
    )
    out.append("")
    for name in header.order:
        out += rust_struct(header, name)
        out.append("")
    for api_name, api in apis:
        lo, hi = api.versions
        out.append(f"// {api_name} v{lo}–{hi} ({api.src.path.name}).")
        out.append("")
        for name in api.order:
            out += rust_struct(api, name)
            out.append("")
    out.append("/// The layout of `api`'s requests, for every version the crate decodes.")
    out.append("pub(super) fn message(api: ApiKey) -> Option<&'static Message> {")
    out.append("    Some(match api {")
    for api_name, api in apis:
        lo, hi = api.versions
        top = api.const(api.top)
        out.append(
            f"        ApiKey::{api_name} => &Message {{ min: {lo}, max: {hi}, body: &{top} }},"
        )
    out.append("        _ => return None,")
    out.append("    })")
    out.append("}")
    out.append("")
    out.append("/// Every API above.")
    out.append("#[cfg(test)]")
    out.append("pub(super) const APIS: &[ApiKey] = &[")
    for api_name, _ in apis:
        out.append(f"    ApiKey::{api_name},")
    out.append("];")
    out.append("")
    out.append("/// A request of `api` with every field at its default.")
    out.append("#[cfg(test)]")
    out.append(
        "pub(crate) fn default_request(api: ApiKey) -> kafka_protocol::messages::RequestKind {"
    )
    out.append("    use kafka_protocol::messages as m;")
    out.append("    match api {")
    for api_name, _ in apis:
        out.append(f"        ApiKey::{api_name} => m::{api_name}Request::default().into(),")
    out.append('        other => panic!("{other:?} has no layout"),')
    out.append("    }")
    out.append("}")
    body = "\n".join(out) + "\n"
    # Import only what the rows use, so a crate without known tags (say) builds warning-free.
    encs = [e for e in ("Classic", "Compact") if f"({e}" in body]
    used = [n for n in ("Elem", "Tagged") if f"{n}::" in body or f"{n} {{" in body]
    names = sorted(used + ["Message", "Struct", "Ty"]) + ["f"]
    imports = []
    if encs:
        imports.append(f"use super::Enc::{{{', '.join(encs)}}};")
    imports.append(f"use super::{{{', '.join(names)}}};")
    return body.replace("IMPORTS", "\n".join(imports), 1)


# ---------------------------------------------------------------------------------------------
# Finding the crate, writing, checking.


def find_crate() -> tuple[Path, str]:
    """The kafka-protocol package weir-kafka depends on, from `cargo metadata`."""
    cargo = os.environ.get("CARGO", "cargo")
    host = None
    try:
        rustc = subprocess.run(
            [os.environ.get("RUSTC", "rustc"), "-vV"], capture_output=True, text=True, check=True
        )
        host = re.search(r"^host: (\S+)$", rustc.stdout, re.M).group(1)
    except (OSError, subprocess.CalledProcessError, AttributeError):
        pass
    cmd = [cargo, "metadata", "--format-version", "1", "--manifest-path", str(ROOT / "Cargo.toml")]
    if host:
        # Only this platform's packages, so cargo fetches nothing the build would not.
        cmd += ["--filter-platform", host]
    try:
        meta = subprocess.run(cmd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise GenError(f"`{' '.join(cmd)}` failed (give --crate-dir instead): {detail.strip()}")
    data = json.loads(meta.stdout)
    packages = {p["id"]: p for p in data["packages"]}
    for node in data["resolve"]["nodes"]:
        if packages[node["id"]]["name"] != "weir-kafka":
            continue
        for dep in node["deps"]:
            package = packages[dep["pkg"]]
            if package["name"] == "kafka-protocol":
                return Path(package["manifest_path"]).parent, package["version"]
    raise GenError("cargo metadata lists no kafka-protocol dependency of weir-kafka")


def crate_version_of(crate_dir: Path) -> str:
    text = (crate_dir / "Cargo.toml").read_text()
    m = re.search(r'^\[package\][^\[]*?^version = "([^"]+)"', text, re.M | re.S)
    if not m:
        raise GenError(f"{crate_dir / 'Cargo.toml'}: no package version")
    return m.group(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if layouts.rs is not current")
    parser.add_argument("--crate-dir", type=Path, help="the kafka-protocol crate's source dir")
    args = parser.parse_args()
    try:
        if args.crate_dir:
            crate_dir, version = args.crate_dir, crate_version_of(args.crate_dir)
        else:
            crate_dir, version = find_crate()
        text = generate(crate_dir, version)
    except GenError as e:
        print(f"{SCRIPT_NAME}: {e}", file=sys.stderr)
        return 2
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), OUT_NAME, "generated", lineterm="", n=1
        )
        shown = list(diff)[:40]
        print("\n".join(shown), file=sys.stderr)
        print(
            f"{SCRIPT_NAME}: {OUT_NAME} is not what kafka-protocol {version} generates; "
            f"run `python3 {SCRIPT_NAME}` and commit the result",
            file=sys.stderr,
        )
        return 1
    OUT.write_text(text)
    print(f"wrote {OUT_NAME} ({len(text)} bytes) from kafka-protocol {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
