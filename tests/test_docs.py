"""The README and docs/ say only what is true of the tree: a short front page, links and anchors
that resolve, files and modules that exist, and commands whose flags and --config keys the
scripts and configs actually define."""

import glob
import importlib
import os
import re

import pytest
from configs_util import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _read(page):
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def _prose(text):
    """The text outside fenced code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _anchors(text):
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    out = set()
    for title in re.findall(r"(?m)^#+ (.+)$", _prose(text)):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def _commands(text):
    """`python scripts/X.py ...` commands of the bash blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)
        for line in block.splitlines():
            for m in re.finditer(r"python (scripts/\w+\.py)((?: +(?:--|\[--)[^ ]+)*)", line):
                out.append((m.group(1), re.findall(r"--([\w.]+)(?:=([^ \]]*))?", m.group(2))))
    return out


def _script_flags(script):
    src = _read(script)
    names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", src))
    if "config_flags.DEFINE_config_file" in src:
        names.add("config")
    return names | {"help", "helpshort", "helpfull"}


def test_the_front_page_is_short_and_points_at_every_docs_page():
    readme = _read("README.md")
    assert len(readme.splitlines()) < 250
    for page in PAGES[1:]:
        assert f"]({page}" in readme, f"README.md does not link {page}"


@pytest.mark.parametrize("page", PAGES)
def test_links_and_anchors_resolve(page):
    text = _read(page)
    here = os.path.dirname(os.path.join(ROOT, page))
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(text)):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(here, path)) if path else os.path.join(ROOT, page)
        assert os.path.exists(file), f"{page}: link to missing {target}"
        if anchor:
            assert anchor in _anchors(open(file).read()), f"{page}: no heading for {target}"


@pytest.mark.parametrize("page", PAGES)
def test_named_files_and_modules_exist(page):
    text = _read(page)
    for path in set(re.findall(r"\b((?:flowmatch|scripts|configs|tests|docs)/[\w/]+\.(?:py|md|png))",
                               text)):
        if re.search(r"/[A-Z]+\.\w+$", path):   # a placeholder such as configs/X.py
            continue
        assert os.path.exists(os.path.join(ROOT, path)), f"{page} names missing {path}"
    for dotted in set(re.findall(r"`(flowmatch(?:\.\w+)+)", text)):
        parts, obj = dotted.split("."), None
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"{page} names {dotted}: no {attr}"
                obj = getattr(obj, attr)
            break
        assert obj is not None, f"{page} names {dotted}, which does not import"


@pytest.mark.parametrize("page", PAGES)
def test_commands_use_real_flags_and_config_keys(page):
    for script, flags in _commands(_read(page)):
        assert os.path.exists(os.path.join(ROOT, script)), f"{page}: no {script}"
        known = _script_flags(script)
        config = dict(flags).get("config") or dict(flags).get("unet_config")
        for name, value in flags:
            top = name.split(".")[0]
            assert top in known, f"{page}: {script} has no flag --{top}"
            if "." in name and top == "config" and config and name.islower():
                m = re.fullmatch(r"configs/(\w+(?:/\w+)?)\.py(?::(\w+))?", config)
                assert m, f"{page}: unexpected --config={config}"
                c = load_config(m.group(1), variant=m.group(2) or "")
                for key in name.split(".")[1:]:
                    assert key in c, f"{page}: {config} has no key {name[len('config.'):]}"
                    c = c[key]
