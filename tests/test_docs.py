"""The docs: every command the README and docs/ show is parsed by the CLI or run, and the site
builds with ``mkdocs build --strict``.

What is checked for a code block (docs/development.md says the same for writers):

* ``bash``: each ``tileseg`` command is parsed by click itself (types, choices and callbacks,
  without running it), so a renamed or removed option fails here; ``$(tileseg sample NAME)``
  must name a sample. Other programs: a benchmark or example script must exist and take the
  options shown, ``python -m MODULE`` must parse its arguments, ``pip install`` may name only
  extras ``pyproject.toml`` has. A block marked ``<!-- docs-test: run -->`` is run, offline, in
  a temporary folder (the samples come from the test cache, as in test_api).
* ``python``: compiled; run when marked (``<!-- docs-test: run; needs: DIR/ -->`` creates DIR
  first). ``yaml``: parsed, and read by ``tileseg.load_manifest`` when it is a manifest.
* ``tileseg ...`` quoted inline in the text, and the examples in each command's ``--help``:
  every option they name must be one of that command's.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import tileseg
from tileseg.cli.main import cli
from tileseg.samples import SAMPLES, fetch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), ROOT / "workflows" / "README.md"]
LANGUAGES = {"bash", "python", "yaml", "json", "text"}
RUN_MARK = re.compile(r"<!-- docs-test: run(?:; needs: (?P<needs>[^>]*?))? -->")
# programs the docs show that belong to other tools: nothing of tileseg's to check in them
EXTERNAL = {"dask", "gdalinfo", "gdalwarp", "aws", "kubectl", "sbatch", "crontab", "systemctl",
            "mkdocs", "echo", "cd", "mkdir"}
SAMPLE = re.compile(r"\$\(tileseg sample ([\w-]+)\)")
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    run: bool
    needs: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```\s*([\w-]*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = RUN_MARK.search(before)
        needs = tuple(mark.group("needs").split()) if mark and mark.group("needs") else ()
        body = "\n".join(line[len(indent):] for line in lines[i + 1:end])
        yield Block(path, i + 1, lang, body + "\n", mark is not None, needs)
        i = end + 1


def prose(path: Path) -> str:
    """The page without its fenced code blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", path.read_text(), flags=re.S | re.M)


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def uncommented(line: str) -> str:
    """The line up to a ``#`` that starts a shell comment (a word's first character, unquoted)."""
    quote = ""
    for k, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k]
    return line


def commands(text: str) -> Iterator[list[str]]:
    """Each shell command of a block as its words: continuations joined, comments, ``&``, ``;``,
    ``&&``, pipes and redirections taken off."""
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        lexer = shlex.shlex(uncommented(line), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, ""
        words: list[str] = []
        tokens = list(lexer)
        k = 0
        while k < len(tokens):
            token = tokens[k]
            if token in {"&", ";", "&&", "||", "|"}:
                if words:
                    yield words
                words = []
            elif set(token) <= set("<>&"):  # a redirection: drop it and its target
                if words and words[-1].isdigit():
                    words.pop()
                k += 1
            else:
                words.append(token)
            k += 1
        if words:
            yield words


def expand(word: str, variables: dict[str, str], sample_path: Callable[[str], object]) -> str:
    word = SAMPLE.sub(lambda m: str(sample_path(m.group(1))), word)
    return VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), word)


def parse_with_click(argv: list[str]) -> None:
    """Parse a ``tileseg`` command line as the CLI would, down to its subcommand, without
    invoking it: a usage error (unknown option, bad choice, missing argument) raises."""
    ctx = cli.make_context("tileseg", list(argv))
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, args = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, args, parent=ctx)
        command = sub


def check_sample(name: str) -> str:
    assert name in SAMPLES, f"$(tileseg sample {name}): no such sample; there are {sorted(SAMPLES)}"
    return f"{name}.tif"


def check_script(path: Path, args: list[str]) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} does not exist"
    source = path.read_text()
    for arg in args:
        option = arg.split("=", 1)[0]
        if option.startswith("--"):
            assert f'"{option}"' in source, f"{path.name} takes no {option}"


def check_command(words: list[str]) -> None:
    """One command of a block that is parsed, not run."""
    program, args = words[0], words[1:]
    if program == "tileseg":
        try:
            parse_with_click(args)
        except click.exceptions.Exit:
            pass  # --help, --version
        except click.ClickException as exc:
            raise AssertionError(f"tileseg {shlex.join(args)}: {exc.format_message()}") from None
    elif program == "python" and args[:2] == ["-m", "pytest"]:
        pass
    elif program == "python" and args[:1] == ["-m"]:
        module = importlib.import_module(args[1])
        parse = getattr(module, "parse_args", None)
        if parse is not None:
            try:
                parse(args[2:])
            except SystemExit as exc:
                raise AssertionError(f"python -m {shlex.join(args[1:])}: exit {exc.code}") from None
    elif program == "python":
        check_script(ROOT / args[0], args[1:])
    elif program == "bash":
        check_script(ROOT / args[0], [])
    elif program == "pip":
        assert args[0] == "install", words
        extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                     ["optional-dependencies"])
        for arg in args[1:]:
            for named in re.findall(r"\[([\w,-]+)\]", arg):
                unknown = set(named.split(",")) - extras
                assert not unknown, f"pip install {arg}: pyproject.toml has no extra {unknown}"
    elif "/" in program:
        assert (ROOT / program).is_file(), f"{program} does not exist"
    else:
        assert program in EXTERNAL, (
            f"{program}: tests/test_docs.py does not know how to check this program's commands")


def shell_commands(block: Block) -> Iterator[list[str]]:
    """A block's commands with their variables and samples filled in for parsing; the
    assignments themselves (``ITEM=...``, ``export X=...``) are not commands."""
    variables: dict[str, str] = {}
    for words in commands(block.text):
        if words[0] == "export":
            words = words[1:]
        while words and re.fullmatch(r"\w+=.*", words[0]):
            key, value = words.pop(0).split("=", 1)
            variables[key] = value
        if words:
            yield [expand(w, variables, check_sample) for w in words]


# -- every block -------------------------------------------------------------------------------


def test_every_code_block_says_its_language() -> None:
    unlabelled = [f"{b.where} ({b.lang or 'none'})" for b in ALL_BLOCKS if b.lang not in LANGUAGES]
    assert not unlabelled, f"code blocks need one of {sorted(LANGUAGES)}: {unlabelled}"


def test_no_command_hides_in_an_indented_code_block() -> None:
    """Indented code escapes the block checks below; the pages use fenced blocks only."""
    found = []
    for page in PAGES:
        lines = prose(page).splitlines()
        for i, line in enumerate(lines[1:], 1):
            if (not lines[i - 1].strip() and line.startswith("    ")
                    and re.match(r"(tileseg|python|dask|bash|pip|export|\w+=)\b", line.strip())):
                found.append(f"{page.relative_to(ROOT)}: {line.strip()[:60]}")
    assert not found, f"put these in a ```bash block: {found}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "bash" and not b.run],
                         ids=lambda b: b.where)
def test_shell_block_commands_parse(block: Block) -> None:
    for words in shell_commands(block):
        check_command(words)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"],
                         ids=lambda b: b.where)
def test_python_block_compiles(block: Block) -> None:
    compile(block.text, block.where, "exec")


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang in ("yaml", "json")],
                         ids=lambda b: b.where)
def test_yaml_and_json_blocks_load(block: Block, tmp_path: Path) -> None:
    if block.lang == "json":
        json.loads(block.text)
        return
    document = yaml.safe_load(block.text)
    rows = document.get("scenes") if isinstance(document, dict) else document
    if isinstance(rows, list) and all(isinstance(r, dict) and "src" in r for r in rows):
        manifest = tmp_path / "scenes.yaml"
        manifest.write_text(block.text)
        assert tileseg.load_manifest(manifest, output_dir=tmp_path / "out")


def test_inline_tileseg_commands_name_real_options() -> None:
    """`tileseg predict ... --tile-size N` in the text: the command and each option exist."""
    ctx = click.Context(cli)
    wrong = []
    for page in PAGES:
        for quoted in re.findall(r"`(tileseg [^`]+)`", prose(page)):
            words = quoted.split()
            command: click.Command | None = cli
            for word in words[1:]:
                if not isinstance(command, click.Group):
                    break
                sub = command.get_command(ctx, word)
                if sub is None:
                    break
                command = sub
            if command is None or isinstance(command, click.Group):
                if len(words) > 1 and re.fullmatch(r"[a-z][a-z-]*", words[1]):
                    wrong.append(f"{page.name}: `{quoted}`: no command {words[1]!r}")
                continue
            known = {"-h", "--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
            for word in words:
                for part in re.split(r"[|\[\]=(),]", word):
                    if re.fullmatch(r"--?[a-zA-Z][\w-]*", part) and part not in known:
                        wrong.append(f"{page.name}: `{quoted}`: {part}")
    assert not wrong, wrong


# option tables of the guide: page -> the command whose options the first column names
OPTION_TABLES = {"guide/predict.md": "predict", "guide/vectorize.md": "vectorize"}


@pytest.mark.parametrize("page", sorted(OPTION_TABLES))
def test_option_tables_name_real_options(page: str) -> None:
    command = cli.get_command(click.Context(cli), OPTION_TABLES[page])
    assert command is not None
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    rows = re.findall(r"^\| (`-[^|]*?) \|", (DOCS / page).read_text(), flags=re.M)
    assert rows, f"docs/{page} has no option table"
    named = {part for row in rows for part in re.split(r"[`{},/ ]+", row) if part.startswith("-")}
    assert not named - known, f"docs/{page}: not options of tileseg {OPTION_TABLES[page]}: {named - known}"


def epilog_examples() -> Iterator[tuple[str, list[str]]]:
    ctx = click.Context(cli)
    pending: list[click.Command | None] = [cli.get_command(ctx, n) for n in cli.list_commands(ctx)]
    while pending:
        command = pending.pop()
        assert command is not None
        if isinstance(command, click.Group):
            pending.extend(command.get_command(ctx, n) for n in command.list_commands(ctx))
        text = re.sub(r"\\\n\s*", "", command.epilog or "")
        for line in text.splitlines():
            if line.strip().startswith("tileseg "):
                yield from ((line.strip(), w) for w in commands(line))


def test_help_examples_parse() -> None:
    """The examples each command's --help prints (and the CLI reference page shows)."""
    examples = list(epilog_examples())
    assert len(examples) > 20
    for line, words in examples:
        words = [expand(w, {}, check_sample) for w in words]
        try:
            check_command(words)
        except AssertionError as exc:
            raise AssertionError(f"--help example {line!r}: {exc}") from None


# -- the marked blocks, run ----------------------------------------------------------------------


@dataclass
class Ran:
    block: Block
    folder: Path
    stdout: list[str]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Run every marked block once, each in a folder of its own (the commands of a block share
    it, as in a shell)."""
    done: dict[str, Ran] = {}
    cwd = Path.cwd()
    for block in [b for b in ALL_BLOCKS if b.run]:
        folder = tmp_path_factory.mktemp("docs-run")
        for need in block.needs:
            (folder / need).mkdir(parents=True, exist_ok=True)
        record = done[block.where] = Ran(block, folder, [])
        os.chdir(folder)
        try:
            if block.lang == "python":
                exec(compile(block.text, block.where, "exec"), {})  # noqa: S102 - our own docs
                continue
            assert block.lang == "bash", block.where
            for words in commands(block.text):
                assert words[0] == "tileseg", f"{block.where}: only tileseg commands run here"
                args = [expand(w, {}, fetch) for w in words[1:]]
                result = CliRunner().invoke(cli, args)
                assert result.exit_code == 0, f"{block.where}: tileseg {shlex.join(args)}: {result.output}"
                record.stdout.append(result.stdout)
        finally:
            os.chdir(cwd)
    return done


def test_marked_blocks_run(ran: dict[str, Ran]) -> None:
    assert {"docs/index.md", "docs/guide/train.md", "docs/guide/models.md"} <= {
        w.split(":")[0] for w in ran}
    (models,) = [r for w, r in ran.items() if w.startswith("docs/guide/models.md:")]
    from tileseg.models.metadata import load_metadata

    written = load_metadata(models.folder / "checkpoints")  # what the TorchGeo example writes
    assert written is not None and [c.name for c in written.classes] == ["background", "field"]


def test_the_front_page_picture_is_what_its_commands_draw(ran: dict[str, Ran]) -> None:
    (record,) = [r for w, r in ran.items() if w.startswith("docs/index.md:")]
    drawn = np.asarray(Image.open(record.folder / "landcover.png").convert("RGB"))
    shown = np.asarray(Image.open(DOCS / "images" / "landcover.png").convert("RGB"))
    assert drawn.shape == shown.shape
    assert (drawn == shown).all(axis=2).mean() > 0.99  # font rendering may differ by a pixel
    assert (DOCS / "images" / "landcover.png").stat().st_size < 300_000  # small enough for a README
    assert "](docs/images/landcover.png)" in (ROOT / "README.md").read_text()


def test_the_bundled_models_scores_in_the_docs_are_what_evaluate_prints(ran: dict[str, Ran]) -> None:
    (record,) = [r for w, r in ran.items() if w.startswith("docs/guide/train.md:")]
    scores = dict(re.findall(r"^(pixel accuracy|mean class accuracy|mean IoU|frequency-weighted IoU)"
                             r"\s+([\d.]+)$", record.stdout[-1], flags=re.M))
    assert len(scores) == 4, record.stdout[-1]
    page = prose(DOCS / "guide" / "train.md").replace("*", "")
    said = re.search(r"gives pixel accuracy ([\d.]+), mean class accuracy ([\d.]+), mean IoU "
                     r"([\d.]+)\s+and\s+frequency-weighted IoU ([\d.]+)", page)
    assert said is not None, "the bundled model's reproduced scores moved in docs/guide/train.md"
    assert [f"{float(v):.3f}" for v in scores.values()] == list(said.groups())


# -- what the pages must hold -------------------------------------------------------------------


def test_readme_is_a_front_page_with_the_install_run_test_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is the front page: move the detail into docs/"
    first = next(b for b in blocks(ROOT / "README.md"))
    install = next(b for b in blocks(DOCS / "install.md"))
    assert first.text == install.text, "README's install/run/test block and docs/install.md differ"
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('pip install -e ".[dev]"', "python -m pytest"):
        assert command in first.text and command in ci  # .ci/run runs what the README says


def nav_pages(entries: object) -> Iterator[str]:
    if isinstance(entries, str):
        yield entries
    elif isinstance(entries, list):
        for entry in entries:
            yield from nav_pages(entry)
    elif isinstance(entries, dict):
        for value in entries.values():
            yield from nav_pages(value)


def test_every_page_the_nav_or_the_readme_names_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    missing = {page for page in nav_pages(config["nav"]) if not (DOCS / page).is_file()}
    links = re.findall(r"\]\((?!https?:)([^)#]+)", prose(ROOT / "README.md"))
    missing |= {link.removeprefix("docs/") for link in links if not (ROOT / link).exists()}
    assert not missing, f"missing: {missing}"
    # a page named in the nav but missing fails the strict build
    assert config["validation"]["nav"]["not_found"] == "warn"


def test_api_page_lists_every_public_name_from_a_module_that_defines_it() -> None:
    entries = re.findall(r"^::: (tileseg(?:\.\w+)+)\.(\w+)$", (DOCS / "reference" / "api.md").read_text(),
                         flags=re.M)
    listed = {name: module for module, name in entries}
    assert len(listed) == len(entries), "a name is listed twice"
    assert set(listed) == set(tileseg.__all__) - {"__version__"}
    for name, module in listed.items():
        assert getattr(importlib.import_module(module), name) is getattr(tileseg, name), name


def test_cli_page_documents_every_command() -> None:
    page = (DOCS / "reference" / "cli.md").read_text()
    found = {m.group(3): (m.group(1), m.group(2)) for m in re.finditer(
        r":module: ([\w.]+)\n\s+:command: (\w+)\n\s+:prog_name: tileseg ([\w-]+)", page)}
    ctx = click.Context(cli)
    assert set(found) == set(cli.list_commands(ctx))
    for name, (module, attribute) in found.items():
        assert getattr(importlib.import_module(module), attribute) is cli.get_command(ctx, name)


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """The site builds with every warning an error (links, anchors, nav, docstrings), as CI does."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocs_click"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[dev]' installs the docs tools)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def test_every_repository_path_the_docs_and_scripts_name_exists() -> None:
    """A module or test that moves leaves no page (nor the GPU check) pointing at its old place."""
    named = [ROOT / "README.md", ROOT / "workflows" / "README.md", *DOCS.rglob("*.md"),
             *(ROOT / "benchmarks").glob("*.sh"), *(ROOT / "benchmarks").glob("*.py")]
    pattern = re.compile(r"(?<![\w/.])((?:tileseg|tests|benchmarks|examples|workflows)/[\w/.-]+"
                         r"\.(?:py|md|sh|json|yaml|toml))")
    missing = sorted({f"{page.relative_to(ROOT)}: {path}" for page in named
                      for path in pattern.findall(page.read_text(encoding="utf-8"))
                      if not (ROOT / path).exists()})
    assert not missing, "\n".join(missing)
