"""The one place that creates the Jinja environment.

Sandboxed (a template cannot reach Python internals), StrictUndefined (a missing value is an error, not an empty
string), trailing newlines kept, and no autoescape: values must enter through `tojson` (JSON is valid YAML), so a
spec value can never change the structure of the rendered file. Every rendered YAML is parsed back by
`render_yaml` before it is returned.

Markdown documents (READMEs, report.md, `deployc diff`) escape each value for where it stands, with the helpers
below (also the template filters `md` and `comment`): `md_text` for inline text (prose, headings, table cells),
`md_code` for a code span, `html_comment` inside `<!-- -->`. JSON in a fenced code block needs none: it holds no
line break, so it cannot close the fence.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from io import StringIO
from typing import Any

from deployc.errors import DeploycError


class TemplateError(DeploycError):
    """A template failed to render or rendered something that does not parse."""


# An escaped backslash, or a UTF-16 surrogate pair as json.dumps escapes a character beyond U+FFFF.
_SURROGATE_PAIR = re.compile(r"(\\\\)|\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _tojson(value: Any) -> str:
    """JSON that YAML reads back as the same value.

    YAML's `\\u` escapes are single UTF-16 units (a pair becomes two lone surrogates there), so characters
    beyond U+FFFF are written as themselves; every other non-ASCII character stays escaped.
    """
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return _SURROGATE_PAIR.sub(lambda m: m.group(1) or chr(
        0x10000 + ((int(m.group(2), 16) - 0xD800) << 10) + int(m.group(3), 16) - 0xDC00), text)


_MD_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
# What starts inline markup anywhere in a line: escapes, code, emphasis, strike-through, links, raw HTML and
# autolinks, entities, table pipes, headings' closing #s, math, mentions. `_` between two letters or digits
# cannot open or close emphasis, so `min_agreement` stays as it is.
_MD_SPECIAL = re.compile(r"[\\`*~\[\]<>&|#$@]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# At the start of a line: a list item (`- `, `+ `, `1. `), a thematic break or setext underline (`---`, `===`).
_MD_LINE_START = re.compile(r"^([ \t]*)(?:([-+=])(?=[ \t]|[-=]*[ \t]*$)|(\d{1,9})(?=[.)](?:[ \t]|$)))")


def md_text(value: Any) -> str:
    """`value` as literal inline Markdown: it renders as the text it is (line breaks as spaces), never as markup,
    in a table cell, a heading or prose. At a line's start it cannot open a list, heading, quote or rule either
    (though indentation by four spaces would still make a code block: no document puts a value there)."""
    text = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), _MD_BREAKS.sub(" ", str(value)))
    return _MD_LINE_START.sub(lambda m: m.group(1) + (f"\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\"),
                              text)


def md_code(value: Any, *, in_table: bool = False) -> str:
    """`value` as an inline code span, verbatim whatever it holds: the fence is one backtick longer than its
    longest run of backticks; in a table, pipes are escaped (GFM splits cells before it reads code spans)."""
    text = _MD_BREAKS.sub(" ", str(value))
    if in_table:
        text = text.replace("|", "\\|")
    if not text.strip(" "):
        return f"`{text or ' '}`"  # spaces only are kept as they are (an empty span would be two backticks)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html_comment(value: Any) -> str:
    """`value` as JSON that stays inside `<!-- ... -->`: no two `-` in a row (so no `-->`, `--!>` or `<!--`), a
    `-` after a `-` written as the JSON escape `\\u002d`, so the comment still decodes to the value exactly.
    (JSON holds `--` only inside strings, where the escape is valid.)"""
    return re.sub(r"(?<=-)-", lambda _: "\\u002d", _tojson(value))


@lru_cache(maxsize=1)
def _env() -> Any:
    from jinja2 import PackageLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        loader=PackageLoader("deployc", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson"] = _tojson
    env.filters["md"] = md_text
    env.filters["comment"] = html_comment
    return env


def render_template(target: str, name: str, **values: Any) -> str:
    """Render `deployc/templates/<target>/<name>`; errors name the template."""
    from jinja2 import TemplateError as JinjaError

    where = f"templates/{target}/{name}"
    try:
        return str(_env().get_template(f"{target}/{name}").render(**values))
    except JinjaError as exc:
        raise TemplateError(f"{where}: {exc}") from None


def render_yaml(target: str, name: str, **values: Any) -> tuple[str, Any]:
    """Render a YAML template and parse it back (safe loader); returns (text, parsed)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    text = render_template(target, name, **values)
    try:
        parsed = YAML(typ="safe", pure=True).load(StringIO(text))
    except YAMLError as exc:
        raise TemplateError(f"templates/{target}/{name} rendered invalid YAML: {exc}") from None
    return text, parsed


def dump_json(data: Any) -> bytes:
    """The canonical serialization of generated JSON: sorted keys, 2-space indent, trailing newline."""
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


_YAML_BREAKS = ("\x85", "\u2028", "\u2029")  # line breaks to YAML 1.1 readers unless escaped


def _represent_str(representer: Any, value: str) -> Any:
    """Strings holding NEL / LS / PS go double-quoted, where they are escaped and so survive a round trip."""
    style = '"' if any(ch in value for ch in _YAML_BREAKS) else None
    return representer.represent_scalar("tag:yaml.org,2002:str", value, style=style)


@lru_cache(maxsize=1)
def _portable_emitter() -> tuple[Any, Any]:
    """Strings holding line breaks go double-quoted; escape NEL / LS / PS as \\x85 / \\u2028 / \\u2029 rather
    than YAML's \\N / \\L / \\P, which Go's YAML parser (Prometheus, promtool, kubectl) does not read."""
    from ruamel.yaml.emitter import Emitter
    from ruamel.yaml.representer import SafeRepresenter

    class PortableEmitter(Emitter):  # type: ignore[misc]
        ESCAPE_REPLACEMENTS = {k: v for k, v in Emitter.ESCAPE_REPLACEMENTS.items() if k not in _YAML_BREAKS}

    class PortableRepresenter(SafeRepresenter):  # type: ignore[misc]
        """SafeRepresenter with the string rule below (registered on this subclass, not globally)."""

    PortableRepresenter.add_representer(str, _represent_str)
    return PortableEmitter, PortableRepresenter


def dump_yaml(data: Any, header: str | None = None) -> bytes:
    """Block-style YAML of plain data (keys sorted, so output is stable), with an optional `# ...` header."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.Emitter, yaml.Representer = _portable_emitter()
    yaml.default_flow_style = False
    yaml.width = 4096
    yaml.allow_unicode = True
    buf = StringIO()
    if header:
        buf.write("".join(f"# {line}\n" for line in header.splitlines()))
    yaml.dump(data, buf)
    return buf.getvalue().encode()
