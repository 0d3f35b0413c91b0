"""The README as a newcomer pastes it: every Python block runs as written, every shell
command names a real make target, fastlstm flag or file, every link resolves, and the
times it states agree with each other.

Which blocks run: every ```python block, each on its own in a fresh namespace (a
reader pastes one block at a time), in a temporary working folder. The ```bash blocks
are not run: they take minutes (make test, make profile, make bench) or need a GPU
(docs/gpu.md); instead each of their commands is checked against the Makefile, the
fastlstm command line's own parser, and the files it names. A block in any other
language, or a shell command this file does not know how to check, fails the test.
"""
import os
import re
import shlex

import pytest

from fastlstm.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", os.path.join("docs", "gpu.md")]


def _blocks(doc):
    """(language, first line number, text) of each fenced block of `doc`."""
    lines = open(os.path.join(REPO, doc), encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if m:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            blocks.append((m.group(1), i + 1, "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return blocks


ALL = [(doc, *block) for doc in DOCS for block in _blocks(doc)]
PYTHON = [b for b in ALL if b[1] == "python"]
SHELL = [b for b in ALL if b[1] == "bash"]


def _id(block):
    doc, lang, line, _ = block
    return f"{os.path.basename(doc)}:{line}:{lang}"


def test_every_block_is_python_or_shell():
    assert PYTHON, "the README has no Python block to run"
    other = [_id(b) for b in ALL if b not in PYTHON and b not in SHELL]
    assert not other, f"blocks this test can neither run nor check: {other}"


@pytest.mark.parametrize("block", PYTHON, ids=_id)
def test_python_block_runs_as_written(block, tmp_path, monkeypatch):
    doc, _, line, text = block
    monkeypatch.chdir(tmp_path)
    code = compile(text, f"{doc}, block at line {line}", "exec")
    exec(code, {"__name__": "__readme__"})


def _commands(text):
    """The commands of a shell block: one a line, comments and blank lines dropped."""
    for raw in text.splitlines():
        words = shlex.split(raw, comments=True)
        if words:
            yield raw, words


def _make_targets():
    with open(os.path.join(REPO, "Makefile")) as f:
        return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w-]*):", f.read(), re.M)}


def _check_fastlstm_args(args, where):
    """Parse `fastlstm ARGS` with the real parser, running nothing."""
    import argparse

    from fastlstm.cli import _Parser

    seen = {}

    def stop(parsed):
        seen["args"] = parsed
        return 0

    original = argparse.ArgumentParser.parse_args

    def parse_only(self, *a, **k):
        parsed = original(self, *a, **k)
        parsed.func = stop
        return parsed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Parser, "parse_args", parse_only)
        try:
            status = main([w.replace("$D", "2026-01-01") for w in args])
        except SystemExit as e:  # argparse rejects unknown flags with status 2
            status = e.code
    assert status == 0 and "args" in seen, f"{where}: fastlstm {' '.join(args)} does not parse"


def _check_paths(words, where):
    for w in words:
        if w.startswith(("bench/", "tests")) and not w.startswith("bench/results/"):
            path = w.split("::")[0]
            assert os.path.exists(os.path.join(REPO, path)), f"{where}: {path} does not exist"


@pytest.mark.parametrize("block", SHELL, ids=_id)
def test_shell_commands_name_real_targets_flags_and_files(block):
    doc, _, line, text = block
    targets = _make_targets()
    for raw, words in _commands(text):
        where = f"{doc}:{line}: {raw.strip()}"
        if raw.strip() == "D=$(date +%F)":
            continue  # a date for the file names below
        while re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes: FASTLSTM_TEST_NATIVE=1 ...
            words = words[1:]
        head = words[0]
        if head == "make":
            missing = [t for t in words[1:] if "=" not in t and t not in targets]
            assert not missing, f"{where}: no make target {missing}"
        elif os.path.basename(head) == "fastlstm":
            _check_fastlstm_args(words[1:], where)
        elif os.path.basename(head).startswith("python") and words[1:3] == ["-m", "fastlstm"]:
            _check_fastlstm_args(words[3:], where)
        elif os.path.basename(head).startswith("python") and words[1:3] == ["-m", "pytest"]:
            _check_paths(words[3:], where)
        elif os.path.basename(head).startswith("python") and words[1:3] == ["-m", "pip"] \
                and words[3] in ("install", "download") or head == "pip" and words[1] == "install":
            pass  # installs and downloads: nothing here to check
        else:
            pytest.fail(f"{where}: a command this test does not know how to check")


# --- links ---------------------------------------------------------------------------------

def _slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path):
    with open(path, encoding="utf-8") as f:
        return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", f.read(), re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_links_stay_inside_the_repository_and_resolve(doc):
    path = os.path.join(REPO, doc)
    text = open(path, encoding="utf-8").read()
    assert "GPU_DESIGN" not in text and "../shared" not in text
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        assert resolved.startswith(REPO + os.sep), f"{doc}: {target} leaves the repository"
        assert os.path.exists(resolved), f"{doc}: {target}: no such file"
        if anchor:
            assert anchor in _anchors(resolved), f"{doc}: {target}: no such heading"


def test_the_readme_links_the_gpu_design_document():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert "](docs/gpu.md" in readme


# --- times ----------------------------------------------------------------------------------

def _times_table():
    """{command: time} from the README's table of times."""
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = readme.split("## Set up, and how long things take")[1].split("\n## ")[0]
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([^`]+)`[^|]*\| ([^|]+)\|", section, re.M)}


def test_the_times_table_covers_what_a_newcomer_runs():
    table = _times_table()
    for command in ("make venv", "make test", "make profile", "make bench", "fastlstm profile --quick",
                    "fastlstm demo charlm", "fastlstm demo charlm --quick", "fastlstm demo sincos",
                    "fastlstm demo toy"):
        assert command in table, f"{command}: no time in the README's table ({sorted(table)})"


def test_time_statements_agree():
    table = _times_table()
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    demos = " ".join(readme.split("\n## Demos")[1].split("\n## ")[0].split())
    said = {
        "fastlstm demo sincos": re.search(r"demo sincos.*?About ([^.]+)\.", demos).group(1),
        "fastlstm demo charlm": re.search(r"demo charlm.*?About (.+?) at its defaults", demos).group(1),
        "fastlstm demo charlm --quick": re.search(r"demo charlm.*?, (\S+ s) with `--quick`", demos).group(1),
        "fastlstm demo toy": re.search(r"demo toy.*?About ([^.]+)\.", demos).group(1),
    }
    for command, text in said.items():
        assert text.replace("minutes", "min") == table[command], (command, text, table[command])
    # The compile check overlaps the suite: no time may be added on top of make test's.
    flat = " ".join(readme.split())
    assert "7 more" not in flat and "overlaps the rest of the suite" in flat
