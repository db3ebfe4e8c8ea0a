#!/usr/bin/env python3
"""Renders helm/agent-job/README.md from README.md.gotmpl, Chart.yaml and values.yaml.

A stand-in for helm-docs (not available here) that understands the part of it this chart uses:
the `{{ template "chart.*" . }}` calls of the template, and `# --` descriptions above values
(with an optional `(type)` first word). Every value must be described, or the script fails.

    scripts/chart-readme.py               write README.md
    scripts/chart-readme.py --check       exit 1 when README.md is not what this script writes
    scripts/chart-readme.py --dump-values print values.yaml as JSON (tests compare it with a real
                                          YAML parser, to keep the small parser below honest)

Python 3 standard library only. The YAML parser reads the subset our two files use — block
mappings, block sequences of scalars, empty or one-line flow collections, folded (`>-`) and literal
(`|`) blocks, plain and quoted scalars — and rejects anything else with the line number, rather than
guess.
"""

import difflib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "agent-job")


class ParseError(Exception):
    pass


# YAML 1.1 (what Helm's parser speaks) reads these as booleans; keep them out of our files.
AMBIGUOUS = {"y", "n", "yes", "no", "on", "off"}


def parse_scalar(text, where):
    text = text.strip()
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise ParseError(f"{where}: unterminated double-quoted string")
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise ParseError(f"{where}: unterminated single-quoted string")
        return text[1:-1].replace("''", "'")
    if text.startswith("[") or text.startswith("{"):
        return parse_flow(text, where)
    if " #" in text:
        text = text.split(" #", 1)[0].rstrip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    if low in AMBIGUOUS:
        raise ParseError(f"{where}: {text!r} is a boolean in YAML 1.1 and a string in 1.2: quote it")
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"[-+]?[0-9]*\.[0-9]+([eE][-+]?[0-9]+)?", text):
        return float(text)
    if text[0] in "&*!|>%@`":
        raise ParseError(f"{where}: unsupported YAML {text!r}")
    return text


def parse_flow(text, where):
    """One-line flow collections: `[]`, `{}`, and `[a, "b"]` lists of scalars."""
    if text in ("[]", "{}"):
        return [] if text == "[]" else {}
    if text.startswith("[") and text.endswith("]"):
        items = [i for i in re.split(r",\s*", text[1:-1].strip()) if i]
        if any(c in text[1:-1] for c in "[]{}"):
            raise ParseError(f"{where}: nested flow collections are not supported")
        return [parse_scalar(i, where) for i in items]
    raise ParseError(f"{where}: unsupported flow collection {text!r}")


class Line:
    def __init__(self, number, indent, text):
        self.number, self.indent, self.text = number, indent, text


def tokenize(source, name):
    """Yields (comment lines, Line) pairs: the `#` lines directly above each content line."""
    lines = []
    comments = []
    for number, raw in enumerate(source.splitlines(), 1):
        stripped = raw.strip()
        if not stripped:
            comments = []
            lines.append((None, Line(number, None, "")))
            continue
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ParseError(f"{name}:{number}: tab in indentation")
        indent = len(raw) - len(raw.lstrip(" "))
        lines.append((comments, Line(number, indent, raw.rstrip()[indent:])))
        comments = []
    return lines


class Parser:
    """Builds Python values, and records the comment block above every mapping key by path."""

    def __init__(self, source, name):
        self.name = name
        self.items = tokenize(source, name)
        self.pos = 0
        self.comments = {}  # tuple(path) -> [comment lines]
        self.order = []  # paths in file order

    def where(self, line):
        return f"{self.name}:{line.number}"

    def peek(self):
        while self.pos < len(self.items) and self.items[self.pos][1].indent is None:
            self.pos += 1
        return self.items[self.pos] if self.pos < len(self.items) else (None, None)

    def parse(self):
        _, first = self.peek()
        if first is None:
            return {}
        value = self.block(first.indent, ())
        _, rest = self.peek()
        if rest is not None:
            raise ParseError(f"{self.where(rest)}: unexpected indentation")
        return value

    def block(self, indent, path):
        _, line = self.peek()
        if line.text.startswith("- ") or line.text == "-":
            return self.sequence(indent, path)
        return self.mapping(indent, path)

    def mapping(self, indent, path):
        result = {}
        while True:
            comments, line = self.peek()
            if line is None or line.indent < indent:
                return result
            if line.indent > indent:
                raise ParseError(f"{self.where(line)}: unexpected indentation")
            match = re.fullmatch(r"([A-Za-z0-9_.\-/\"']+):(?:\s+(.*))?", line.text)
            if not match:
                raise ParseError(f"{self.where(line)}: expected `key: value`, got {line.text!r}")
            key = match.group(1).strip("\"'")
            if key in result:
                raise ParseError(f"{self.where(line)}: duplicate key {key!r}")
            rest = (match.group(2) or "").strip()
            self.pos += 1
            child = path + (key,)
            self.comments[child] = comments
            self.order.append(child)
            if rest.startswith("#"):
                rest = ""
            if rest in (">-", ">", "|", "|-"):
                result[key] = self.text_block(indent, rest, line)
            elif rest:
                result[key] = parse_scalar(rest, self.where(line))
            else:
                _, nxt = self.peek()
                if nxt is not None and nxt.indent > indent:
                    result[key] = self.block(nxt.indent, child)
                elif nxt is not None and nxt.indent == indent and nxt.text.startswith("- "):
                    result[key] = self.sequence(indent, child)
                else:
                    result[key] = None

    def sequence(self, indent, path):
        result = []
        while True:
            _, line = self.peek()
            if line is None or line.indent != indent or not line.text.startswith("- "):
                return result
            item = line.text[2:].strip()
            if re.match(r"[A-Za-z0-9_.\-/]+:(\s|$)", item):
                raise ParseError(f"{self.where(line)}: mappings inside sequences are not supported")
            result.append(parse_scalar(item, self.where(line)))
            self.pos += 1

    def text_block(self, indent, style, opener):
        parts = []
        while self.pos < len(self.items):
            _, line = self.items[self.pos]
            if line.indent is not None and line.indent <= indent:
                break
            parts.append(line.text if line.indent is not None else "")
            self.pos += 1
        while parts and parts[-1] == "":
            parts.pop()
        if not parts:
            raise ParseError(f"{self.where(opener)}: empty block scalar")
        if style.startswith(">"):
            text = " ".join(p for p in parts if p)
        else:
            text = "\n".join(parts)
        return text if style.endswith("-") else text + "\n"


def parse_yaml(path):
    with open(path, encoding="utf-8") as f:
        parser = Parser(f.read(), os.path.relpath(path, ROOT))
    return parser.parse(), parser


def describe(comments):
    """The `# --` description in a comment block: (type or None, text) or None."""
    for i, c in enumerate(comments):
        if c.startswith("# --"):
            text = c[4:].strip()
            for more in comments[i + 1 :]:
                body = more[1:].strip()
                if body.startswith("@"):
                    break
                text += " " + body
            kind = None
            match = re.match(r"\((\w+)\)\s*(.*)", text)
            if match:
                kind, text = match.group(1), match.group(2)
            return kind, text.strip()
    return None


def type_of(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "string"


def value_rows(values, parser):
    """One row per described value, in file order. Fails on any value without a description."""
    rows = []
    missing = []

    def walk(node, path):
        for key, value in node.items():
            child = path + (key,)
            doc = describe(parser.comments.get(child, []))
            nested = isinstance(value, dict) and value
            documented_children = nested and any(
                describe(parser.comments.get(child + (k,), [])) for k in value
            )
            if documented_children:
                if doc:
                    raise ParseError(
                        f"{'.'.join(child)}: describe either the map or its keys, not both"
                    )
                walk(value, child)
            elif doc:
                kind, text = doc
                rows.append((".".join(child), kind or type_of(value), value, text))
            else:
                missing.append(".".join(child))

    walk(values, ())
    if missing:
        raise ParseError(
            "values.yaml: these values have no `# --` description: " + ", ".join(missing)
        )
    return rows


def md_escape(text):
    return text.replace("|", "\\|")


def values_section(rows):
    out = ["## Values", "", "| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, kind, value, text in rows:
        default = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        out.append(f"| {key} | {kind} | `{md_escape(default)}` | {md_escape(text)} |")
    return "\n".join(out)


def badge(label, value, colour):
    shield = value.replace("-", "--").replace("_", "__")
    return f"![{label}: {value}](https://img.shields.io/badge/{label}-{shield}-{colour}?style=flat-square) "


def render(template, chart, rows):
    def requirements():
        kube = chart.get("kubeVersion")
        if not kube:
            return ""
        return f"## Requirements\n\nKubernetes: `{kube}`\n"

    def maintainers():
        people = chart.get("maintainers") or []
        if not people:
            return ""
        raise ParseError("Chart.yaml: maintainers are not supported by chart-readme.py yet")

    blocks = {
        "chart.header": lambda: f"# {chart['name']}\n",
        "chart.name": lambda: chart["name"],
        "chart.description": lambda: chart.get("description", "") + "\n",
        "chart.versionBadge": lambda: badge("Version", chart["version"], "informational"),
        "chart.typeBadge": lambda: badge("Type", chart.get("type", "application"), "informational"),
        "chart.appVersionBadge": lambda: badge("AppVersion", str(chart["appVersion"]), "informational"),
        "chart.maintainersSection": maintainers,
        "chart.requirementsSection": requirements,
        "chart.valuesSection": lambda: values_section(rows),
        "helm-docs.versionFooter": lambda: (
            "----------------------------------------------\n"
            "Generated from chart metadata by `scripts/chart-readme.py`; edit `README.md.gotmpl` "
            "and `values.yaml`, then run it.\n"
        ),
    }

    def substitute(match):
        name = match.group(1)
        if name not in blocks:
            raise ParseError(f"README.md.gotmpl: unknown template {name!r}")
        return blocks[name]()

    text = re.sub(r'\{\{-?\s*template\s+"([^"]+)"\s+\.\s*-?\}\}', substitute, template)
    if "{{" in text:
        line = text[: text.index("{{")].count("\n") + 1
        raise ParseError(f"README.md.gotmpl: unsupported template syntax near rendered line {line}")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def main(argv):
    modes = {"--check", "--dump-values"}
    if any(a not in modes for a in argv[1:]):
        print(f"usage: {argv[0]} [--check | --dump-values]", file=sys.stderr)
        return 2
    try:
        values, parser = parse_yaml(os.path.join(CHART, "values.yaml"))
        if "--dump-values" in argv:
            print(json.dumps(values, indent=2, sort_keys=True))
            return 0
        chart, _ = parse_yaml(os.path.join(CHART, "Chart.yaml"))
        rows = value_rows(values, parser)
        with open(os.path.join(CHART, "README.md.gotmpl"), encoding="utf-8") as f:
            text = render(f.read(), chart, rows)
    except ParseError as e:
        print(f"chart-readme: {e}", file=sys.stderr)
        return 1
    target = os.path.join(CHART, "README.md")
    if "--check" in argv:
        try:
            with open(target, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), "README.md (committed)", "README.md (generated)"
            )
            sys.stderr.writelines(list(diff)[:80])
            print(
                "chart-readme: helm/agent-job/README.md is stale: run scripts/chart-readme.py and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    with open(target, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(target, ROOT)} ({len(rows)} values)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
