"""Files in, decoded documents out: file discovery, YAML/JSON parsing.

Nothing here knows the configuration schema; the loader hands each decoded
document to a format adapter (see `load.py`).  Every failure becomes a
`ConfigIssue` naming the file as the user gave it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.config.errors import ConfigIssue

CONFIG_EXTENSIONS = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class Document:
    source: str      # file name as given (directory entries joined to the directory as given)
    number: int      # position in a multi-document YAML file, from 0
    data: Any


class _StrictLoader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's scalars and no duplicate keys.

    PyYAML implements YAML 1.1, where `off`, `no` and `on` are booleans, `010`
    is octal and `1:30` is the integer 90: `proxyProtocol: {mode: off}` or a
    header value `yes` would silently change type.  Only `true`/`false` are
    booleans here and numbers follow JSON.  A key written twice is an error
    instead of "last one wins"."""


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                           "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)   # "010" is ten, not eight


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.Node, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:   # unhashable key; construct_mapping reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first.line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def expand_paths(paths: list[str] | str, issues: list[ConfigIssue]) -> list[str]:
    """The files to read: each file as given, each directory's config files in name order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for given in paths:
        given = os.fspath(given)
        if os.path.isdir(given):
            try:
                names = sorted(os.listdir(given))
            except OSError as exc:
                issues.append(ConfigIssue(given, "", f"cannot read directory: {exc.strerror}"))
                continue
            found = [os.path.join(given, n) for n in names
                     if n.lower().endswith(CONFIG_EXTENSIONS)
                     and not n.startswith(".")
                     and os.path.isfile(os.path.join(given, n))]
            if not found:
                issues.append(ConfigIssue(given, "", "no .yaml, .yml or .json files in directory"))
            files.extend(found)
        elif not os.path.exists(given):
            issues.append(ConfigIssue(given, "", "file not found"))
        elif not given.lower().endswith(CONFIG_EXTENSIONS):
            issues.append(ConfigIssue(given, "", "unsupported file type (expected .yaml, .yml or .json)"))
        else:
            files.append(given)
    return files


def read_file(source: str, issues: list[ConfigIssue]) -> list[Document] | None:
    """Decode one file; None when it cannot be read or decoded (one issue recorded,
    with the line number for syntax errors)."""
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        issues.append(ConfigIssue(source, "", f"cannot read file: {exc.strerror or exc}"))
        return None
    except UnicodeDecodeError as exc:
        issues.append(ConfigIssue(source, "", f"not UTF-8 text (byte offset {exc.start})"))
        return None
    if source.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            issues.append(ConfigIssue(
                source, "", f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}"))
            return None
        return [Document(source, 0, data)]
    try:
        datas = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as exc:
        issues.append(ConfigIssue(source, "", _yaml_message(exc)))
        return None
    except yaml.YAMLError as exc:
        issues.append(ConfigIssue(source, "", f"YAML error: {exc}"))
        return None
    except (ValueError, TypeError) as exc:   # e.g. an unhashable (list) mapping key
        issues.append(ConfigIssue(source, "", f"YAML error: {exc}"))
        return None
    return [Document(source, i, d) for i, d in enumerate(datas) if d is not None]


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = exc.problem or exc.context or "invalid YAML"
    return f"YAML syntax error{where}: {what}"


# --------------------------------------------------------------- format adapters


@dataclass(frozen=True, slots=True)
class Item:
    """One raw resource and where it came from, for messages."""
    source: str
    path: str        # e.g. "gatewayRoutes[products]"; the field paths of messages start here
    raw: Any


@dataclass(slots=True)
class Resources:
    """Every raw resource of every document, before validation.

    Adapters for other encodings (App Mesh CLI JSON, describe output, Kubernetes
    manifests) fill the same lists, translated to the native shapes, so
    validation and merging exist once."""
    virtual_gateways: list[Item]
    gateway_routes: list[Item]
    virtual_services: list[Item]
    settings: list[Item]

    @classmethod
    def empty(cls) -> "Resources":
        return cls([], [], [], [])
