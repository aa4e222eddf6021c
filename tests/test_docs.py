"""The README and docs/ say only what is true of the tree: a short front page, links and anchors
that resolve, files and modules that exist, commands whose flags and --config keys the scripts
and configs actually define, and measured numbers that come from the results files they cite.

A measured region of a page is marked

    <!-- results: results/NAME/FILE.csv [results/NAME/OTHER.json ...] -->
    ... a table ...
    <!-- /results -->

with paths relative to the page (docs/results/ holds the files, copied as the drivers wrote
them).  Every number of the region must be a value of one of its files, as printed: 0.184 is
found when a value rounds to it at three decimals, 1,000 or 8 only when a value equals it, 99.8%
also as the fraction 0.998.  Numbers inside names (w2, rk4, dpmpp_2m) are not numbers.
"""

import csv
import glob
import importlib
import json
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


# -- measured numbers come from results files ------------------------------------------------

_RESULTS = re.compile(r"<!-- results: ([^>]+?) -->(.*?)<!-- /results -->", re.S)
# A number standing alone: not inside a name (w2, rk4, dpmpp_2m, fig1), thousands as 100,000.
_NUMBER = re.compile(r"(?<![\w.])([-+]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?([eE][-+]?\d+)?(%?)"
                     r"(?!\w|\.\d)")


def _numbers(text):
    """[(as printed, value, decimals shown, is a percentage)] of the numbers in `text`."""
    out = []
    for m in _NUMBER.finditer(text):
        sign, whole, frac, exp, pct = m.groups()
        value = float(sign + whole.replace(",", "") + (frac or "") + (exp or ""))
        decimals = len(frac or ".") - 1 - (int(exp[1:]) if exp else 0)
        out.append((m.group(0), value, decimals, bool(pct)))
    return out


def _printed_as(value, printed, decimals):
    """Whether `value` (from a results file) prints as `printed` with `decimals` digits (an
    integer as printed only when equal)."""
    if decimals <= 0 and printed == int(printed):
        return value == printed
    return abs(value - printed) <= 0.5 * 10.0 ** -decimals * (1 + 1e-9)


def _file_values(path):
    """Every number of a CSV or JSON results file: numeric cells or leaves, and the numbers
    written inside text cells (the 0.01 of a 'dopri5@0.01' label)."""
    with open(path) as f:
        if path.endswith(".json"):
            leaves, stack = [], [json.load(f)]
            while stack:
                x = stack.pop()
                if isinstance(x, dict):  # keys are labels: their numbers count as text
                    stack += list(x.values()) + list(x.keys())
                elif isinstance(x, list):
                    stack += x
                else:
                    leaves.append(x)
        else:
            leaves = [cell for row in csv.reader(f) for cell in row]
    values = []
    for x in leaves:
        if isinstance(x, bool) or x is None:
            continue
        if isinstance(x, (int, float)):
            values.append(float(x))
            continue
        try:
            values.append(float(x))
        except ValueError:
            values += [v for _, v, _, _ in _numbers(str(x))]
    return values


def _unfound(text, values):
    """The numbers of `text` that no value of `values` prints as."""
    missing = []
    for printed, x, decimals, pct in _numbers(text):
        if not any(_printed_as(v, x, decimals) or (pct and _printed_as(v, x / 100, decimals + 2))
                   for v in values):
            missing.append(printed)
    return missing


def _results_problems(page, text):
    """What is wrong with the measured regions of a page (its text): a region whose file is
    missing, a number found in none of its files, a region left open."""
    here = os.path.dirname(os.path.join(ROOT, page))
    problems = []
    if text.count("<!-- results:") != len(_RESULTS.findall(text)) or (
            text.count("<!-- /results -->") != len(_RESULTS.findall(text))):
        problems.append(f"{page}: a <!-- results: ... --> region without its <!-- /results -->")
    for m in _RESULTS.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        values = []
        for name in m.group(1).split():
            path = os.path.join(here, name)
            if not os.path.isfile(path):
                problems.append(f"{page}:{line}: results file {name} does not exist")
                continue
            values += _file_values(path)
        if values:
            missing = _unfound(m.group(2), values)
            if missing:
                problems.append(f"{page}:{line}: numbers not in {m.group(1)}: {missing}")
    return problems


@pytest.mark.parametrize("page", PAGES)
def test_measured_numbers_come_from_their_results_files(page):
    assert _results_problems(page, _read(page)) == []


def test_some_pages_are_checked_against_results_files():
    assert sum(len(_RESULTS.findall(_read(page))) for page in PAGES) >= 1


def test_a_region_fails_on_a_missing_file_a_stray_number_or_no_end(tmp_path):
    results = tmp_path / "r.csv"
    results.write_text("method,nfe,tv,label\neuler,8,0.18434,dopri5@0.01\nrk4,1000,0.998,x\n")
    page = os.path.relpath(tmp_path / "page.md", ROOT)
    good = ("<!-- results: r.csv -->\n| euler | NFE 8 | 0.184 | w2 rk4 dpmpp_2m |\n"
            "| rk4 (1,000) | 99.8% | 0.18 | 1e-2 |\n<!-- /results -->")
    assert _results_problems(page, good) == []
    assert _results_problems(page, good.replace("r.csv", "gone.csv")) == [
        f"{page}:1: results file gone.csv does not exist"]
    assert _results_problems(page, good.replace("0.184", "0.185")) == [
        f"{page}:1: numbers not in r.csv: ['0.185']"]
    assert _results_problems(page, good.replace("NFE 8", "NFE 9")) == [
        f"{page}:1: numbers not in r.csv: ['9']"]
    assert _results_problems(page, good.replace("<!-- /results -->", "")) != []


def test_numbers_are_read_as_printed():
    assert [(p, v, d) for p, v, d, _ in _numbers(
        "w2 rk4 dpmpp_2m 1,000 -0.045 +26.6% (0.083) 1e-5 2.35. x")] == [
        ("1,000", 1000.0, 0), ("-0.045", -0.045, 3), ("+26.6%", 26.6, 1), ("0.083", 0.083, 3),
        ("1e-5", 1e-5, 5), ("2.35", 2.35, 2)]
    assert _printed_as(0.18434, 0.184, 3) and not _printed_as(0.18434, 0.185, 3)
    assert _printed_as(8.0, 8.0, 0) and not _printed_as(8.4, 8.0, 0)
