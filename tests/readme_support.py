"""README code blocks, extracted by section so tests run the examples exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_sections(path: Path = README) -> dict[str, str]:
    """``{heading text: body}`` for every ``##``/``###`` heading of the README."""
    out: dict[str, str] = {}
    current, lines = None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{2,3} (.+)$", line)
        if m:
            if current is not None:
                out[current] = "\n".join(lines)
            current, lines = m.group(1).strip(), []
        elif current is not None:
            lines.append(line)
    if current is not None:
        out[current] = "\n".join(lines)
    return out


def code_blocks(text: str, lang: str = "python") -> list[str]:
    """The fenced ``lang`` blocks of a Markdown text, in order."""
    return [m.group(1) for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)]


def section_code(heading: str, lang: str = "python", path: Path = README) -> list[str]:
    sections = readme_sections(path)
    if heading not in sections:
        raise KeyError(f"README has no section {heading!r} (sections: {list(sections)})")
    return code_blocks(sections[heading], lang)
