"""Release manifests: release-<date>.json and .md, with package changes since the previous release."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.publish import pkgdiff

PINS = ("torch", "cuda", "cudnn", "python", "os")
NAME_RE = re.compile(r"^release-(\d{8})\.json$")
DATE_RE = re.compile(r"^\d{8}$")


def release_date(explicit: str | None) -> str:
    """YYYYMMDD: the one given, else SOURCE_DATE_EPOCH's day (UTC), else today (UTC)."""
    if explicit:
        try:
            valid = bool(DATE_RE.match(explicit) and datetime.strptime(explicit, "%Y%m%d"))
        except ValueError:
            valid = False
        if not valid:
            raise UserError(f"--date {explicit!r} is not a date in the form YYYYMMDD")
        return explicit
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and not epoch.isdigit():
        raise UserError(f"SOURCE_DATE_EPOCH {epoch!r} is not a number of seconds")
    moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return moment.strftime("%Y%m%d")


def pins(labels: dict[str, str]) -> dict[str, str]:
    """torch, cuda, cudnn, python and os as the image's own pin labels state them."""
    return {k: labels.get(names.label(k), "") for k in PINS}


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise UserError(f"{path} is not valid JSON; move it aside or fix it") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path} is not a release manifest (no 'images' list)")
    return data


def previous(directory: Path, date: str) -> Path | None:
    """The latest release manifest in `directory` dated before `date`."""
    dated = {m.group(1): p for p in directory.glob("release-*.json") if (m := NAME_RE.match(p.name))}
    older = sorted(d for d in dated if d < date)
    return dated[older[-1]] if older else None


def assemble(directory: Path, date: str, repository: str, revision: str,
             images: list[dict[str, Any]]) -> dict[str, Any]:
    """The release of `date`: images of an earlier run that day kept unless replaced by name,
    and package changes per image against the previous release."""
    same_day = _load(directory / f"release-{date}.json")
    merged = {i["name"]: i for i in (same_day["images"] if same_day else [])}
    merged.update({i["name"]: i for i in images})
    prior_path = previous(directory, date)
    prior = {i["name"]: i for i in _load(prior_path)["images"]} if prior_path else {}
    return {
        "date": date, "repository": repository, "revision": revision,
        "previous": prior_path.name if prior_path else None,
        "images": [merged[n] for n in sorted(merged)],
        "changes": {n: pkgdiff.diff(prior[n].get("packages", {}), i.get("packages", {}))
                    for n, i in sorted(merged.items()) if n in prior},
    }


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


def render_markdown(release: dict[str, Any]) -> str:
    """The release as Markdown: tags, digests and pins; aliases; package changes."""
    lines = [f"# Release {release['date']}", "",
             f"Images in `{release['repository']}`, source revision `{release['revision']}`.", ""]
    lines += _md_table(["tag", "digest", *PINS], [
        [f"`{i['tag']}`", f"`{i['digest']}`", *(i["pins"].get(k, "") for k in PINS)]
        for i in release["images"]])
    lines += ["", "## Aliases", ""]
    lines += [f"- `{i['tag']}`: " + ", ".join(f"`{a}`" for a in i["aliases"])
              for i in release["images"]]
    if not release["previous"]:
        lines += ["", "## Package changes", "", "No earlier release manifest to compare with."]
        return "\n".join(lines) + "\n"
    lines += ["", f"## Package changes since {release['previous']}"]
    for image in release["images"]:
        lines += ["", f"### {image['name']}", ""]
        changes = release["changes"].get(image["name"])
        if changes is None:
            lines.append("New in this release.")
            continue
        found = pkgdiff.rows(changes)
        lines += _md_table(["kind", "package", "change", "before", "after"], found) if found \
            else ["No package changes."]
    return "\n".join(lines) + "\n"


def write(directory: Path, release: dict[str, Any]) -> tuple[Path, Path]:
    """Write release-<date>.json and .md (atomically); return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / f"release-{release['date']}.json", directory / f"release-{release['date']}.md")
    for path, text in zip(paths, (json.dumps(release, indent=2, sort_keys=True) + "\n",
                                  render_markdown(release)), strict=True):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths
